import Foundation
import Models
import Testing

@testable import StreamBroker

@Suite("Ephemeral subscriptions state machine")
struct EphemeralStateTests {
    func event(_ offset: Int64, partition: Int = 0, key: String? = nil) -> Event {
        Event(
            topic: "t", partition: partition, offset: offset, id: "e\(offset)", ts: 0, key: key, headers: nil,
            payload: RawJSON(trusted: Array("1".utf8)))
    }

    func state(partitions: Int = 1, queueLimit: Int = 10_000, cacheLimit: Int = 256) -> EphemeralState {
        var tuning = EphemeralState.Tuning()
        tuning.ephemeralQueueLimit = queueLimit
        tuning.cacheLimit = cacheLimit
        var s = EphemeralState(topic: "t", tuning: tuning)
        s.setPartitions(partitions)
        return s
    }

    /// Visits every queued subscriber once; the frames each got (offsets) and what was left.
    func visitAll(_ s: inout EphemeralState) -> (frames: [UInt64: [Int64]], left: [UInt64: EphemeralState.Visit]) {
        var frames: [UInt64: [Int64]] = [:]
        var left: [UInt64: EphemeralState.Visit] = [:]
        while let id = s.nextVisit() {
            var out: [[UInt8]] = []
            left[id] = s.visit(id, frames: &out)
            frames[id, default: []] += out.map(offset)
        }
        return (frames, left)
    }

    func offset(_ frame: [UInt8]) -> Int64 {
        let object = try! JSONSerialization.jsonObject(with: Data(frame)) as! [String: Any]
        #expect(object["type"] as? String == "MESSAGE")
        #expect(object["group"] is NSNull)
        return (object["offset"] as! NSNumber).int64Value
    }

    @Test func subscribersAtTheTailShareOneEncodedFrame() {
        var s = state()
        s.subscribe(1, filter: .init(), start: [1])
        s.subscribe(2, filter: .init(), start: [1])
        _ = visitAll(&s)
        s.appended([event(1), event(2)])
        var first: [[UInt8]] = []
        var second: [[UInt8]] = []
        let visits = [s.nextVisit(), s.nextVisit()]
        #expect(Set(visits) == [1, 2], "each subscriber is visited once")
        #expect(s.nextVisit() == nil)
        #expect(s.visit(1, frames: &first) == .idle)
        #expect(s.visit(2, frames: &second) == .idle)
        #expect(first.map(offset) == [1, 2])
        #expect(first == second)
        // The same bytes, not a copy per subscriber.
        first[0].withUnsafeBufferPointer { a in
            second[0].withUnsafeBufferPointer { b in #expect(a.baseAddress == b.baseAddress) }
        }
        #expect(s.subscribers[1]?.next == [3])
    }

    @Test func aSubscriberBehindTheCacheReadsFromTheStore() {
        var s = state(cacheLimit: 2)
        s.noteHighWatermark(0, 3)
        s.subscribe(1, filter: .init(), start: [1])
        s.appended([event(4), event(5), event(6)])  // the cache keeps 5 and 6
        #expect(s.cache[0].map { $0?.event.offset } == [5, 6])
        var frames: [[UInt8]] = []
        #expect(s.nextVisit() == 1)
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 256))
        #expect(s.readSucceeded(1, partition: 0, from: 1, events: (1...4).map { event($0) }, now: 0, frames: &frames) == .none)
        #expect(frames.map(offset) == [1, 2, 3, 4])
        frames = []
        #expect(s.nextVisit() == 1, "visited again after the read")
        #expect(s.visit(1, frames: &frames) == .idle)
        #expect(frames.map(offset) == [5, 6], "then served from the cache")
    }

    @Test func creditsGateDeliveriesAndCountFramesSentBeforeTheFirstFlow() {
        var s = state()
        s.subscribe(1, filter: .init(), start: [1])
        s.appended([event(1), event(2)])
        #expect(visitAll(&s).frames[1] == [1, 2])
        // FLOW 3 after two messages went out: one credit left.
        s.flow(1, credits: 3)
        s.appended([event(3), event(4)])
        #expect(visitAll(&s).frames[1] == [3])
        #expect(s.subscribers[1]?.credits == 0)
        s.flow(1, credits: 5)
        #expect(visitAll(&s).frames[1] == [4])
    }

    @Test func filteredEventsArePassedOverWithoutSpendingCredits() {
        var s = state()
        s.subscribe(1, filter: SubscriptionFilter(key: "a"), start: [1])
        s.flow(1, credits: 1)
        s.appended([event(1, key: "b"), event(2, key: "a"), event(3, key: "a")])
        #expect(visitAll(&s).frames[1] == [2])
        #expect(s.subscribers[1]?.next == [3])
    }

    @Test func polledHighWatermarksTellWhetherTheFeedMissedEvents() {
        var s = state(partitions: 2)
        s.appended([event(1), event(2)])
        let found1 = s.highWatermarksReceived([2, 0])
        #expect(!found1, "the feed brought everything: nothing missed")
        let found2 = s.highWatermarksReceived([2, 3])
        #expect(found2, "partition 1 has events the feed never brought")
        #expect(s.highWatermarks == [2, 3])
        let found3 = s.highWatermarksReceived([1, 3, 7])
        #expect(!found3, "older marks, and partitions it does not know, find nothing")
    }

    @Test func newPartitionsStartAtTheirBeginning() {
        var s = state()
        s.subscribe(1, filter: .init(), start: [5])
        s.setPartitions(3)
        #expect(s.subscribers[1]?.next == [5, 1, 1])
        #expect(s.highWatermarks == [0, 0, 0])
        s.appended([event(1, partition: 2)])
        #expect(visitAll(&s).frames[1] == [1])
    }

    @Test func aResetMovesAnExistingSubscriberOnlyWhenAsked() {
        var s = state()
        s.subscribe(1, filter: .init(), start: [3])
        s.subscribe(1, filter: .init(), start: nil)
        #expect(s.subscribers[1]?.next == [3])
        s.subscribe(1, filter: .init(), start: [1])
        #expect(s.subscribers[1]?.next == [1])
    }

    @Test func aHoleIsWaitedForThenSkippedAfterTheGapTimeout() {
        var s = state()
        s.noteHighWatermark(0, 3)
        s.subscribe(1, filter: .init(), start: [1])
        var frames: [[UInt8]] = []
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 256))
        // 1 is missing (reserved by a slow writer), 2 and 3 are there.
        #expect(s.readSucceeded(1, partition: 0, from: 1, events: [event(2), event(3)], now: 100, frames: &frames) == .armTimer(at: 2_100))
        #expect(frames.isEmpty)
        #expect(!s.hasWork, "no re-read until a wake-up or the timer")
        s.tickReceived()
        #expect(s.nextVisit() == 1)
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 256))
        #expect(
            s.readSucceeded(1, partition: 0, from: 1, events: [event(2), event(3)], now: 2_100, frames: &frames)
                == .skipped(partition: 0, 1...1))
        #expect(s.subscribers[1]?.next == [2])
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 2, limit: 256))
    }

    @Test func aHoleThatFillsIsDelivered() {
        var s = state()
        s.noteHighWatermark(0, 2)
        s.subscribe(1, filter: .init(), start: [1])
        var frames: [[UInt8]] = []
        _ = s.nextVisit()
        _ = s.visit(1, frames: &frames)
        _ = s.readSucceeded(1, partition: 0, from: 1, events: [event(2)], now: 0, frames: &frames)
        // The slow writer's event arrives on the feed: the subscriber reads again at once.
        s.appended([event(1)])
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 2, limit: 256), "2 is not in the cache: read")
        #expect(frames.map(offset) == [1])
        #expect(s.subscribers[1]?.holes.isEmpty == true)
    }

    @Test func aFailedReadIsRetriedWhenTheTimerTicks() {
        var s = state()
        s.noteHighWatermark(0, 2)
        s.subscribe(1, filter: .init(), start: [1])
        var frames: [[UInt8]] = []
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 256))
        #expect(s.readFailed(1, now: 10) == .armTimer(at: 510))
        s.appended([event(3)])
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .idle, "no reads before the retry delay")
        s.tickReceived()
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 256))
    }

    @Test func readsPauseWhileTheQueueIsOverHalfFull() {
        var s = state(queueLimit: 100)
        s.noteHighWatermark(0, 1_000)
        #expect(s.pauseLevel(backlog: 50, partition: 0, from: 1) == nil)
        #expect(s.pauseLevel(backlog: 51, partition: 0, from: 1) == 25)
        s.subscribe(1, filter: .init(), start: [1])
        s.waitForDrain(1)
        var frames: [[UInt8]] = []
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .idle)
        s.drained(1)
        #expect(s.nextVisit() == 1)
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 1, limit: 25))
    }

    @Test func aVisitDeliversItsShareThenYields() {
        var s = state(queueLimit: 8)  // 2 frames per visit
        s.subscribe(1, filter: .init(), start: [1])
        s.subscribe(2, filter: .init(), start: [1])
        s.appended((1...3).map { event($0) })
        var frames: [[UInt8]] = []
        #expect(s.nextVisit() == 1)
        #expect(s.visit(1, frames: &frames) == .again)
        #expect(frames.map(offset) == [1, 2])
    }

    @Test func aClosedOrRemovedSubscriberGetsNothing() {
        var s = state()
        s.subscribe(1, filter: .init(), start: [1])
        s.subscribe(2, filter: .init(), start: [1])
        s.closed(1)
        s.remove(2)
        s.appended([event(1)])
        let visited = visitAll(&s)
        #expect(visited.frames[1] ?? [] == [])
        #expect(visited.frames[2] == nil)
        var frames: [[UInt8]] = []
        #expect(s.readSucceeded(1, partition: 0, from: 1, events: [event(1)], now: 0, frames: &frames) == .none)
        #expect(frames.isEmpty)
    }

    @Test func aNonContiguousFeedRestartsTheCache() {
        var s = state()
        s.setPartitions(1)
        s.appended([event(1), event(2)])
        s.appended([event(2)])
        #expect(s.cache[0].map { $0?.event.offset } == [1, 2], "a repeated event is ignored")
        s.appended([event(5)])
        #expect(s.cache[0].map { $0?.event.offset } == [1, 2, nil, nil, 5], "room for what the feed brings late")
        s.appended([event(3)])
        #expect(s.cached(0, 3)?.event.offset == 3)
        #expect(s.cached(0, 4) == nil)
        s.appended([event(400)])
        #expect(s.cache[0].map { $0?.event.offset } == [400], "far beyond: the cache starts again")
        #expect(s.cacheStart[0] == 400)
    }

    @Test func aSubscriberAtTheTailReadsOnWithAFullQueue() {
        var s = state(queueLimit: 100)  // 25 per read, the tail is 256 + 25 offsets
        s.noteHighWatermark(0, 1_000)
        // The feed lags behind the store (the safety poll saw 1000) and brought 999 late.
        s.appended([event(998)])
        s.appended([event(1_000)])
        #expect(s.cache[0].map { $0?.event.offset } == [998, nil, 1_000])
        #expect(s.pauseLevel(backlog: 80, partition: 0, from: 999) == nil, "at the tail: reads on (and overflows if it stopped reading)")
        #expect(s.pauseLevel(backlog: 80, partition: 0, from: 720) == nil, "within the tail")
        #expect(s.pauseLevel(backlog: 80, partition: 0, from: 719) == 25, "further behind: paced")
        // Waiting for its queue to drain, a subscriber at the tail still reads.
        s.subscribe(1, filter: .init(), start: [999])
        s.waitForDrain(1)
        var frames: [[UInt8]] = []
        _ = s.nextVisit()
        #expect(s.visit(1, frames: &frames) == .read(partition: 0, from: 999, limit: 25))
    }
}
