import Models
import Testing

@testable import StreamBroker

/// Drives a ``GroupState`` the way ``DispatcherLoop`` does, with an in-memory log instead of a
/// store, and time as a plain number: no clock, no sleeps.
struct DispatchHarness {
    typealias Action = GroupState.Action

    var state: GroupState
    /// The stored events per partition (a missing offset is a hole).
    var log: [Int: [Int64]] = [:]
    var now: Int64 = 0
    var sent: [GroupState.Delivery] = []
    var commits: [GroupState.Commit] = []
    var timer: Int64?
    var audits: [GroupState.Audit] = []
    var deadLetters: [GroupState.AttemptEnd] = []
    var persisted: [GroupState.AttemptEnd] = []
    var lost: [Int] = []
    var reads = 0
    var failReads = false
    var failDeadLetters = false
    var fenceCommits = false
    var lowestOffset: Int64?

    init(_ state: GroupState) { self.state = state }

    static func event(_ offset: Int64, partition: Int = 0) -> Event {
        Event(
            topic: "t", partition: partition, offset: offset, id: "e\(offset)", ts: 0, key: nil, headers: nil,
            payload: RawJSON(trusted: Array("1".utf8)))
    }

    /// Appends events the way the change feed reports them (the high-water mark moves).
    mutating func store(_ offsets: ClosedRange<Int64>, partition: Int = 0) {
        log[partition, default: []] += offsets
        state.noteHighWatermark(partition, offsets.upperBound)
    }

    /// Reserves offsets without writing them (a slow or dead writer).
    mutating func reserve(upTo offset: Int64, partition: Int = 0) { state.noteHighWatermark(partition, offset) }

    mutating func pump(at time: Int64) {
        now = time
        run(state.pumpRequested(now: now))
    }

    /// The timer fired (the loop only ticks when `now` reached the armed deadline).
    mutating func tick(at time: Int64) {
        state.tickReceived()
        timer = nil
        pump(at: time)
    }

    mutating func ack(_ offset: Int64, partition: Int = 0, at time: Int64) {
        now = time
        state.ackReceived(partition: partition, offset: offset, now: now)
        pump(at: time)
    }

    mutating func nack(_ offset: Int64, partition: Int = 0, reason: String? = nil, delayMs: Int64? = nil, at time: Int64) {
        now = time
        run(state.nackReceived(partition: partition, offset: offset, reason: reason, delayMs: delayMs, now: now))
    }

    mutating func run(_ actions: [Action]) {
        var queue = actions
        while !queue.isEmpty {
            let action = queue.removeFirst()
            switch action {
            case .read(let p, let from, let limit):
                reads += 1
                if failReads {
                    queue += state.readFailed(now: now)
                } else {
                    let events = (log[p] ?? []).filter { $0 >= from }.sorted().prefix(limit).map { Self.event($0, partition: p) }
                    queue += state.readSucceeded(partition: p, from: from, events: Array(events), now: now)
                }
            case .readLowestOffset(let p, let from):
                queue += state.lowestOffsetRead(partition: p, from: from, lowest: lowestOffset, now: now)
            case .send(let deliveries):
                sent += deliveries
                queue += state.framesSent(now: now)
            case .commit(let batch):
                commits += batch
                queue += state.commitsCompleted(batch.map { ($0, fenceCommits ? .fenced : .committed) }, now: now)
            case .clearAttempts:
                break
            case .persistAttempts(let end):
                persisted.append(end)
                state.attemptsPersisted(partition: end.partition, offset: end.event.offset)
            case .deadLetter(let end):
                if failDeadLetters {
                    queue += state.deadLetterFailed(end, now: now)
                } else {
                    deadLetters.append(end)
                    state.deadLetterPublished(end, now: now)
                }
            case .audit(let record):
                audits.append(record)
            case .partitionLost(let partition, _):
                lost.append(partition)
            case .armTimer(let deadline):
                timer = deadline
            }
        }
    }
}

@Suite("Group dispatcher actions")
struct GroupStateActionsTests {
    func harness(
        maxAttempts: Int = 5, backoff: [Int64] = [], window: Int = 10, ackTimeout: Int64 = 1000,
        tuning: GroupState.Tuning = GroupState.Tuning()
    ) -> DispatchHarness {
        var state = GroupState(maxAttempts: maxAttempts, backoffMs: backoff, tuning: tuning)
        state.addPartition(index: 0, start: 1, highWatermark: 0)
        state.addMember(.init(id: 1, maxInflight: window, ackTimeoutMs: ackTimeout))
        return DispatchHarness(state)
    }

    @Test func readsWhatIsMissingAndDeliversInOrder() {
        var h = harness(window: 3)
        h.store(1...5)
        h.pump(at: 0)
        #expect(h.sent.map(\.event.offset) == [1, 2, 3])
        #expect(h.timer == 1000, "armed for the ack deadline")
        h.ack(1, at: 10)
        #expect(h.sent.map(\.event.offset) == [1, 2, 3, 4])
    }

    @Test func acksMayWaitOnlyWhileNoEventWaitsForRoomAndTheSweepTakesThemInTime() {
        var tuning = GroupState.Tuning()
        tuning.acksDeferred = true
        var h = harness(window: 2, ackTimeout: 1000, tuning: tuning)
        h.store(1...3)
        h.pump(at: 0)
        #expect(h.sent.map(\.event.offset) == [1, 2])
        #expect(!h.state.acksMayWait, "event 3 waits for room: an ack must wake the loop")
        #expect(h.timer == 1000, "no sweep while acks wake the loop: the ack deadline")
        h.ack(1, at: 10)
        #expect(h.sent.map(\.event.offset) == [1, 2, 3])
        #expect(h.state.acksMayWait, "everything stored is in flight: acks may wait")
        #expect(h.timer == 110, "the sweep: acks queued meanwhile are taken within the commit interval")
        h.ack(2, at: 50)
        h.ack(3, at: 60)
        h.tick(at: 110)
        #expect(h.commits == [.init(partition: 0, committed: 3, epoch: 0)])
        #expect(h.timer == nil, "nothing in flight: no sweep")
        h.store(4...4)
        h.pump(at: 200)
        #expect(!h.state.acksMayWait || h.sent.last?.event.offset == 4)
        #expect(h.timer == 300, "a new delivery in flight: swept again")
    }

    @Test func withoutDeferredAcksNoSweepIsArmed() {
        var h = harness(window: 10, ackTimeout: 1000)
        h.store(1...1)
        h.pump(at: 0)
        #expect(h.state.acksMayWait)
        #expect(h.timer == 1000, "only the ack deadline")
    }

    @Test func commitsAreBatchedOverTheCommitInterval() {
        var h = harness()
        h.store(1...3)
        h.pump(at: 0)
        h.ack(1, at: 10)
        #expect(h.commits.isEmpty, "the first ack starts the interval")
        #expect(h.timer == 110)
        h.ack(2, at: 60)
        h.ack(3, at: 109)
        #expect(h.commits.isEmpty)
        h.tick(at: 110)
        #expect(h.commits == [.init(partition: 0, committed: 3, epoch: 0)], "one commit for three acks")
        #expect(h.timer == nil, "nothing in flight, nothing to commit: no timer")
        h.ack(3, at: 120)
        #expect(h.commits.count == 1, "a duplicate ack moves nothing")
    }

    @Test func ackTimeoutExpiresExactlyAtTheDeadline() {
        var h = harness(ackTimeout: 1000)
        h.store(1...1)
        h.pump(at: 0)
        #expect(h.timer == 1000)
        h.tick(at: 999)
        #expect(h.sent.count == 1, "one millisecond early: nothing expires")
        #expect(h.timer == 1000)
        h.tick(at: 1000)
        #expect(h.sent.map(\.attempt) == [1, 2])
        #expect(h.persisted.map(\.attempts) == [1], "the ended attempt is stored before it goes again")
        #expect(h.audits.count == 1)
        #expect(h.timer == 2000, "armed for the new attempt's deadline")
    }

    @Test func anInputAfterTheArmedDeadlineExpiresBeforeTheTick() {
        var h = harness(window: 10, ackTimeout: 100)
        h.store(1...2)
        h.pump(at: 0)
        h.ack(2, at: 99)
        #expect(h.sent.count == 2)
        h.ack(2, at: 150)
        #expect(h.sent.map(\.event.offset) == [1, 2, 1])
    }

    @Test func redeliveryBackoffArmsTheTimerForEachStep() {
        var h = harness(backoff: [200, 1000])
        h.store(1...1)
        h.pump(at: 0)
        h.nack(1, reason: "x", delayMs: nil, at: 10)
        #expect(h.timer == 210, "after attempt 1: the first step")
        h.tick(at: 209)
        #expect(h.sent.count == 1)
        h.tick(at: 210)
        #expect(h.sent.map(\.attempt) == [1, 2])
        h.nack(1, reason: nil, delayMs: nil, at: 300)
        #expect(h.timer == 1210, "attempt 2's ack deadline is still armed: it fires early and recomputes")
        h.tick(at: 1299)
        #expect(h.sent.count == 2)
        h.tick(at: 1300)
        #expect(h.sent.map(\.attempt) == [1, 2, 3])
        h.nack(1, reason: nil, delayMs: 5, at: 1400)
        #expect(h.timer == 1405, "delay_ms overrides the backoff")
    }

    @Test func gapTimerWaitsForTheLowestMissingOffsetThenSkipsIt() {
        var h = harness()
        h.reserve(upTo: 1)
        h.store(2...3)
        h.pump(at: 100)
        #expect(h.sent.isEmpty, "nothing past the hole")
        #expect(h.timer == 2100, "gap timeout from when the hole was first seen")
        let reads = h.reads
        h.ack(5, at: 500)
        #expect(h.reads == reads, "no re-read while waiting, except on a wake-up")
        h.tick(at: 2099)
        #expect(h.sent.isEmpty && h.audits.isEmpty, "one millisecond early: still waiting")
        #expect(h.timer == 2100, "the timer keeps the hole's first sighting")
        h.tick(at: 2100)
        #expect(h.audits == [.gapSkipped(partition: 0, 1...1)])
        #expect(h.sent.map(\.event.offset) == [2, 3])
        #expect(h.state.partitions[0].committed == 1)
        #expect(h.timer == 2200, "the skip is committed after the interval")
    }

    @Test func aHoleFilledBeforeTheTimeoutIsDeliveredAndNotSkipped() {
        var h = harness()
        h.reserve(upTo: 1)
        h.store(2...2)
        h.pump(at: 0)
        h.log[0]! += [1]
        h.tick(at: 1999)
        #expect(h.sent.map(\.event.offset) == [1, 2])
        h.ack(1, at: 2000)
        h.ack(2, at: 2000)
        h.tick(at: 5000)
        #expect(h.audits.isEmpty, "no gap skipped")
        #expect(h.state.partitions[0].committed == 2)
    }

    @Test func retentionSkipsDeletedOffsetsWithoutWaiting() {
        var tuning = GroupState.Tuning()
        tuning.retention = true
        var h = harness(tuning: tuning)
        h.reserve(upTo: 7)
        h.store(8...9)
        h.lowestOffset = 8
        h.pump(at: 0)
        #expect(h.sent.map(\.event.offset) == [8, 9])
        #expect(h.audits.isEmpty, "deleted, not a gap")
        #expect(h.state.partitions[0].committed == 7)
    }

    @Test func retentionWithoutDeletionsFallsBackToTheGapTimer() {
        var tuning = GroupState.Tuning()
        tuning.retention = true
        var h = harness(tuning: tuning)
        h.reserve(upTo: 1)
        h.store(2...2)
        h.lowestOffset = 2
        h.pump(at: 50)
        // The lowest stored offset is 2 and the hole is 1: 2 > 1 means 1 was deleted.
        #expect(h.sent.map(\.event.offset) == [2])
        var k = harness(tuning: tuning)
        k.reserve(upTo: 1)
        k.store(2...2)
        k.lowestOffset = 1
        k.pump(at: 50)
        #expect(k.sent.isEmpty)
        #expect(k.timer == 2050)
    }

    @Test func aFailedReadIsRetriedAfterItsDelayOnly() {
        var h = harness()
        h.store(1...2)
        h.failReads = true
        h.pump(at: 0)
        #expect(h.timer == 500)
        let reads = h.reads
        h.ack(9, at: 100)
        #expect(h.reads == reads, "no reads until the retry tick")
        h.failReads = false
        h.tick(at: 500)
        #expect(h.sent.map(\.event.offset) == [1, 2])
    }

    @Test func deadLetterPublishIsRetriedWithoutRedelivering() {
        var h = harness(maxAttempts: 1)
        h.store(1...1)
        h.pump(at: 0)
        h.failDeadLetters = true
        h.nack(1, reason: "bad", delayMs: nil, at: 10)
        #expect(h.deadLetters.isEmpty)
        #expect(h.timer == 1000, "the ack deadline was armed first")
        h.failDeadLetters = false
        h.tick(at: 1000)
        #expect(h.timer == 1010, "then the dead letter's retry")
        h.pump(at: 1009)
        #expect(h.deadLetters.isEmpty)
        h.tick(at: 1010)
        #expect(h.deadLetters.map(\.attempts) == [1])
        #expect(h.sent.count == 1, "never back to a consumer")
        #expect(h.state.partitions[0].committed == 1)
        h.tick(at: 1110)
        #expect(h.commits.last?.committed == 1)
    }

    @Test func aFencedCommitGivesThePartitionUp() {
        var h = harness()
        h.store(1...1)
        h.pump(at: 0)
        h.fenceCommits = true
        h.ack(1, at: 0)
        h.tick(at: 100)
        #expect(h.lost == [0])
        #expect(!h.state.partitions[0].owned)
    }

    @Test func pumpStopsAfterTheRoundLimit() {
        var tuning = GroupState.Tuning()
        tuning.groupReadLimit = 1
        tuning.maxRounds = 3
        var h = harness(window: 100, tuning: tuning)
        h.store(1...10)
        h.pump(at: 0)
        #expect(h.sent.count == 2, "three rounds (the first only reads), then other inputs get their turn")
        h.pump(at: 0)
        #expect(h.sent.count == 5)
    }
}
