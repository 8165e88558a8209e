import Foundation
import Models
import Testing

@testable import StreamBroker

@Suite("Group dispatcher state machine")
struct GroupStateTests {
    func event(_ offset: Int64, partition: Int = 0, key: String? = nil, headers: Headers? = nil) -> Event {
        Event(
            topic: "t", partition: partition, offset: offset, id: "e\(offset)", ts: 0, key: key, headers: headers,
            payload: RawJSON(trusted: Array("1".utf8)))
    }

    func state(maxAttempts: Int = 5, backoff: [Int64] = [], members: [(UInt64, Int)] = [(1, 10)], ackTimeout: Int64 = 1000) -> GroupState {
        var s = GroupState(maxAttempts: maxAttempts, backoffMs: backoff)
        s.addPartition(index: 0, start: 1, highWatermark: 0)
        for (id, window) in members { s.addMember(.init(id: id, maxInflight: window, ackTimeoutMs: ackTimeout)) }
        return s
    }

    @Test func deliversInOrderWithinTheWindow() {
        var s = state(members: [(1, 3)])
        s.offer(0, (1...5).map { event($0) })
        let first = s.takeDeliveries(now: 0)
        #expect(first.map(\.event.offset) == [1, 2, 3])
        #expect(first.allSatisfy { $0.attempt == 1 && $0.member == 1 })
        #expect(s.takeDeliveries(now: 0).isEmpty)
        s.ack(partition: 0, offset: 2)
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [4])
    }

    @Test func polledHighWatermarksTellWhetherTheFeedMissedEvents() {
        var s = state()
        s.addPartition(index: 1, start: 1, highWatermark: 0)
        s.offer(0, (1...3).map { event($0) })
        let found1 = s.highWatermarksRead([3, 0])
        #expect(!found1, "the feed brought everything: nothing missed")
        let found2 = s.highWatermarksRead([3, 2])
        #expect(found2, "partition 1 has events the feed never brought")
        #expect(s.partitions[1].highWatermark == 2)
        let found3 = s.highWatermarksRead([2, 2])
        #expect(!found3, "an older mark finds nothing")
        #expect(s.partitions[0].highWatermark == 3)
        // A partition another replica delivers is not this one's to rescan.
        s.disown(partition: 1)
        let found4 = s.highWatermarksRead([3, 9])
        #expect(!found4)
        let found5 = s.highWatermarksRead([3, 9, 4])
        #expect(!found5, "marks of partitions it does not know are ignored")
    }

    @Test func watermarkIsContiguous() {
        var s = state()
        s.offer(0, (1...3).map { event($0) })
        _ = s.takeDeliveries(now: 0)
        s.ack(partition: 0, offset: 2)
        s.ack(partition: 0, offset: 3)
        #expect(s.partitions[0].committed == 0, "an unacked offset below acked ones holds the watermark")
        s.ack(partition: 0, offset: 1)
        #expect(s.partitions[0].committed == 3)
        #expect(s.dirtyPartitions == [0])
    }

    @Test func ackTimeoutRedeliversWithTheNextAttempt() {
        var s = state(ackTimeout: 100)
        s.offer(0, [event(1)])
        _ = s.takeDeliveries(now: 0)
        #expect(s.nextDeadline() == 100)
        #expect(s.expire(now: 99).isEmpty)
        let ended = s.expire(now: 100)
        #expect(ended.count == 1 && ended[0].attempts == 1 && !ended[0].deadLetter)
        let again = s.takeDeliveries(now: 100)
        #expect(again.map(\.attempt) == [2])
        #expect(s.partitions[0].redeliveries == 1)
    }

    @Test func nackWaitsForItsDelayAndBackoffRepeatsTheLastStep() {
        var s = state(backoff: [50, 200])
        s.offer(0, [event(1)])
        _ = s.takeDeliveries(now: 0)
        _ = s.nack(partition: 0, offset: 1, reason: "x", delayMs: 500, now: 10)
        #expect(s.takeDeliveries(now: 509).isEmpty)
        #expect(s.takeDeliveries(now: 510).map(\.attempt) == [2])
        // Without delay_ms the backoff applies: after attempt 2 → 200 ms (the last step repeats).
        _ = s.nack(partition: 0, offset: 1, reason: nil, delayMs: nil, now: 600)
        #expect(s.takeDeliveries(now: 799).isEmpty)
        #expect(s.takeDeliveries(now: 800).map(\.attempt) == [3])
        #expect(s.backoff(afterAttempt: 9) == 200)
    }

    @Test func deadLetterAfterMaxAttempts() {
        var s = state(maxAttempts: 2)
        s.offer(0, [event(1), event(2)])
        _ = s.takeDeliveries(now: 0)
        s.ack(partition: 0, offset: 2)
        #expect(s.nack(partition: 0, offset: 1, reason: "a", delayMs: 0, now: 0)?.deadLetter == false)
        _ = s.takeDeliveries(now: 0)
        let last = s.nack(partition: 0, offset: 1, reason: "b", delayMs: 0, now: 0)
        #expect(last?.deadLetter == true && last?.attempts == 2 && last?.reason == "b")
        #expect(s.takeDeliveries(now: 0).isEmpty)
        #expect(s.partitions[0].committed == 0)
        s.deadLettered(partition: 0, offset: 1)
        #expect(s.partitions[0].committed == 2)
        #expect(s.partitions[0].deadLetters == 1)
    }

    @Test func closingAConnectionEndsItsAttemptsAndOthersGetThem() {
        var s = state(members: [(1, 1), (2, 1)])
        s.offer(0, [event(1), event(2), event(3)])
        let sent = s.takeDeliveries(now: 0)
        #expect(Set(sent.map(\.member)) == [1, 2])
        let toOne = sent.first { $0.member == 1 }!.event.offset
        let ended = s.removeMember(1, now: 5)
        #expect(ended.map(\.event.offset) == [toOne])
        s.ack(partition: 0, offset: sent.first { $0.member == 2 }!.event.offset)
        let next = s.takeDeliveries(now: 5)
        #expect(next.first?.event.offset == toOne && next.first?.attempt == 2 && next.first?.member == 2)
    }

    @Test func creditsGateDeliveryAfterTheFirstFlow() {
        var s = state(members: [(1, 100)])
        s.flow(1, credits: 0)
        s.offer(0, (1...5).map { event($0) })
        #expect(s.takeDeliveries(now: 0).isEmpty)
        s.flow(1, credits: 2)
        #expect(s.takeDeliveries(now: 0).count == 2)
        s.flow(1, credits: 3)
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [3, 4, 5])
    }

    /// A FLOW that arrives after deliveries began counts them: the window holds from the SUBSCRIBE.
    @Test func messagesBeforeTheFirstFlowSpendItsCredits() {
        var s = state(members: [(1, 100)])
        s.offer(0, (1...10).map { event($0) })
        #expect(s.takeDeliveries(now: 0).count == 10, "no FLOW yet: only max_inflight applies")
        s.flow(1, credits: 4)
        s.offer(0, (11...12).map { event($0) })
        #expect(s.takeDeliveries(now: 0).isEmpty, "10 sent already spend the 4 credits")
        s.flow(1, credits: 7)
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [11], "4 + 7 credits less 10 sent leave 1")
    }

    @Test func filteredEventsCountAsDone() {
        var s = state()
        s.filter = SubscriptionFilter(key: "k")
        s.offer(0, [event(1, key: "x"), event(2, key: "k"), event(3)])
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [2])
        #expect(s.partitions[0].committed == 1)
        s.ack(partition: 0, offset: 2)
        #expect(s.partitions[0].committed == 3)
    }

    @Test func offerKeepsOnlyContiguousEvents() {
        var s = state()
        s.offer(0, [event(2), event(3)])
        #expect(s.partitions[0].buffer.isEmpty, "a gap before the hand-over must be read from the store")
        #expect(s.partitions[0].highWatermark == 3)
        #expect(s.partitionsNeedingRead() == [0])
        s.offer(0, [event(1), event(2)])
        s.offer(0, [event(2), event(3)])
        #expect(s.partitions[0].buffer.map(\.offset) == [1, 2, 3])
    }

    @Test func persistedAttemptsContinueAfterRestart() {
        var s = GroupState(maxAttempts: 3, backoffMs: [])
        s.addPartition(index: 0, start: 1, highWatermark: 1, attempts: [1: 2])
        s.addMember(.init(id: 1, maxInflight: 5, ackTimeoutMs: 10))
        s.offer(0, [event(1)])
        #expect(s.takeDeliveries(now: 0).map(\.attempt) == [3])
        #expect(s.expire(now: 10).first?.deadLetter == true)
    }

    @Test func resetForgetsInFlightAndFreesTheWindow() {
        var s = state(members: [(1, 2)])
        s.offer(0, (1...4).map { event($0) })
        _ = s.takeDeliveries(now: 0)
        s.reset(partition: 0, start: 1)
        #expect(s.members[1]?.inflight == 0)
        let accepted = s.ack(partition: 0, offset: 1)
        #expect(!accepted, "acks for forgotten deliveries are ignored")
        s.offer(0, (1...2).map { event($0) })
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [1, 2])
    }

    @Test func holeWaitsThenIsSkippedAfterTheGapTimeout() {
        var s = state()
        s.noteHighWatermark(0, 3)
        // Offset 1 is reserved but not written yet; 2 and 3 are visible.
        #expect(s.noteRead(0, from: 1, events: [event(2), event(3)], now: 100, gapTimeoutMs: 2000) == .waiting(until: 2100))
        #expect(s.takeDeliveries(now: 100).isEmpty, "nothing past the lowest missing offset")
        #expect(s.partitionsNeedingRead().isEmpty, "no re-read until a wake-up")
        s.recheckHoles()
        // Seen again later: the timer keeps its start.
        #expect(s.noteRead(0, from: 1, events: [event(2)], now: 2099, gapTimeoutMs: 2000) == .waiting(until: 2100))
        s.recheckHoles()
        #expect(s.noteRead(0, from: 1, events: [event(2), event(3)], now: 2100, gapTimeoutMs: 2000) == .skipped(1...1))
        #expect(s.partitions[0].committed == 1)
        #expect(s.partitions[0].nextOffset == 2)
        #expect(s.noteRead(0, from: 2, events: [event(2), event(3)], now: 2100, gapTimeoutMs: 2000) == .none)
        #expect(s.takeDeliveries(now: 2100).map(\.event.offset) == [2, 3])
    }

    @Test func slowWriterInsideTheTimeoutIsDeliveredInOrder() {
        var s = state()
        s.noteHighWatermark(0, 2)
        #expect(s.noteRead(0, from: 1, events: [event(2)], now: 0, gapTimeoutMs: 2000) == .waiting(until: 2000))
        s.recheckHoles()
        #expect(s.noteRead(0, from: 1, events: [event(1), event(2)], now: 1999, gapTimeoutMs: 2000) == .none)
        #expect(s.takeDeliveries(now: 1999).map(\.event.offset) == [1, 2])
        #expect(s.partitions[0].gapsSkipped == 0)
    }

    @Test func eachHoleHasItsOwnTimer() {
        var s = state()
        s.noteHighWatermark(0, 5)
        _ = s.noteRead(0, from: 1, events: [], now: 0, gapTimeoutMs: 1000)
        s.recheckHoles()
        // Hole 1 filled at t=900 (with 2); 3 is the next hole, first seen now: its timer starts at 900.
        #expect(s.noteRead(0, from: 1, events: [event(1), event(2)], now: 900, gapTimeoutMs: 1000) == .none)
        _ = s.takeDeliveries(now: 900)
        #expect(s.noteRead(0, from: 3, events: [event(4)], now: 900, gapTimeoutMs: 1000) == .waiting(until: 1900))
        s.recheckHoles()
        #expect(s.noteRead(0, from: 3, events: [event(4)], now: 1899, gapTimeoutMs: 1000) == .waiting(until: 1900))
    }

    @Test func aRunOfMissingOffsetsIsSkippedTogether() {
        var s = state()
        s.noteHighWatermark(0, 101)
        // A batch reserved 1...100 and its insert failed; 101 is there.
        #expect(s.noteRead(0, from: 1, events: [event(101)], now: 0, gapTimeoutMs: 2000) == .waiting(until: 2000))
        s.recheckHoles()
        #expect(s.noteRead(0, from: 1, events: [event(101)], now: 2000, gapTimeoutMs: 2000) == .skipped(1...100))
        #expect(s.partitions[0].committed == 100)
        #expect(s.noteRead(0, from: 101, events: [event(101)], now: 2000, gapTimeoutMs: 2000) == .none)
        #expect(s.takeDeliveries(now: 2000).map(\.event.offset) == [101])
    }

    @Test func onlyOffsetsMissingWhenTheHoleWasSeenAreSkipped() {
        var s = state()
        s.noteHighWatermark(0, 2)
        // Empty read: 1...2 missing (reserved, not written) at t=0.
        #expect(s.noteRead(0, from: 1, events: [], now: 0, gapTimeoutMs: 1000) == .waiting(until: 1000))
        s.noteHighWatermark(0, 5)
        s.recheckHoles()
        // At the timeout 3 and 4 were reserved later: only 1...2 go; 3...4 get a timer of their own.
        #expect(s.noteRead(0, from: 1, events: [event(5)], now: 1000, gapTimeoutMs: 1000) == .skipped(1...2))
        #expect(s.noteRead(0, from: 3, events: [event(5)], now: 1000, gapTimeoutMs: 1000) == .waiting(until: 2000))
    }

    @Test func skippedRangesAboveAnUnackedMessageWaitForIt() {
        var s = state(members: [(1, 10)])
        s.offer(0, [event(1)])
        _ = s.takeDeliveries(now: 0)
        s.noteHighWatermark(0, 1000)
        s.skipDeleted(0, below: 1000)
        #expect(s.partitions[0].committed == 0, "offset 1 is still in flight")
        #expect(s.partitions[0].done.isEmpty, "the range is kept as a range")
        s.ack(partition: 0, offset: 1)
        #expect(s.partitions[0].committed == 999)
    }

    @Test func retentionDeletedOffsetsAreSkippedAtOnce() {
        var s = state()
        s.noteHighWatermark(0, 10)
        #expect(s.noteRead(0, from: 1, events: [event(8), event(9)], now: 0, gapTimeoutMs: 2000) == .waiting(until: 2000))
        s.skipDeleted(0, below: 8)
        #expect(s.partitions[0].committed == 7)
        #expect(s.partitions[0].hole == nil && !s.partitions[0].waitingForHole)
        #expect(s.noteRead(0, from: 8, events: [event(8), event(9)], now: 0, gapTimeoutMs: 2000) == .none)
        #expect(s.takeDeliveries(now: 0).map(\.event.offset) == [8, 9])
    }
}
