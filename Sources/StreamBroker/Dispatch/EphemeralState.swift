import DequeModule
import Models

/// The pure state of a topic's ephemeral subscriptions (no group) on this replica, all served
/// by one dispatcher: a shared cache of each partition's latest events with their MESSAGE
/// frames encoded once, and per subscriber only its positions, credits, filter and waits.
///
/// A subscriber at the tail is served from the cache: one encoding and no store read however
/// many subscribers there are. One that is behind (it started earlier, ran out of credits, or
/// waited for its queue to drain) reads its own way forward from the store until it reaches
/// the cache. No I/O, no clock: callers pass `now` in milliseconds.
struct EphemeralState {
    typealias MemberID = ClientConnection.ID

    /// The settings the decisions use.
    struct Tuning: Sendable {
        var gapTimeoutMs: Int64 = 2_000
        /// Frames a subscriber may have queued; its reads pause above half of it.
        var ephemeralQueueLimit = 10_000
        /// Delay before reading again after a failed read.
        var readRetryMs: Int64 = 500
        /// Events kept per partition for subscribers at the tail.
        var cacheLimit = 256

        init() {}

        init(_ settings: BrokerSettings) {
            gapTimeoutMs = settings.gapTimeoutMs
            ephemeralQueueLimit = settings.ephemeralQueueLimit
        }

        /// Events per store read, and frames per visit before others get their turn.
        var readLimit: Int { max(1, min(256, ephemeralQueueLimit / 4)) }
    }

    /// An event of the cache and its MESSAGE frame (the same bytes for every subscriber).
    struct Cached {
        let event: Event
        let frame: [UInt8]
    }

    /// Missing offsets `offset...upTo` below the high-water mark, first seen at `since`.
    struct Hole: Equatable {
        let offset: Int64
        let upTo: Int64
        let since: Int64
        /// No re-read until a wake-up (new events) or the gap timer.
        var waiting = true
    }

    struct Subscriber {
        var filter: SubscriptionFilter
        /// The next offset to deliver, per partition.
        var next: [Int64]
        /// nil until the first FLOW; then the credits left.
        var credits: Int64?
        /// Messages sent before the first FLOW: they spend that FLOW's credits too.
        var sentBeforeFirstFlow: Int64 = 0
        var holes: [Int: Hole] = [:]
        /// A read failed: no reads until the timer ticks.
        var retryAfterError = false
        /// Its queue is over half full: no reads until it drained.
        var waitingForDrain = false
        /// Closed for overflowing its queue: nothing more is sent.
        var closed = false
        /// In the visit queue.
        var queued = false

        var hasRoom: Bool { credits.map { $0 > 0 } ?? true }

        mutating func spendCredit() {
            if credits != nil {
                credits! -= 1
            } else {
                sentBeforeFirstFlow += 1
            }
        }

        /// Holds a subscriber's place while it is taken out (allocates nothing).
        static let placeholder = Subscriber(filter: SubscriptionFilter(), next: [])
    }

    /// What a visit of a subscriber leaves to do.
    enum Visit: Equatable {
        /// Nothing until an input brings something.
        case idle
        /// It delivered its share of frames for now: visit it again later.
        case again
        /// Read from the store for it; answer ``readSucceeded(_:partition:from:events:now:frames:)``
        /// or ``readFailed(_:now:)``.
        case read(partition: Int, from: Int64, limit: Int)
    }

    /// What a read's answer leaves to do.
    enum ReadOutcome: Equatable {
        case none
        /// Arm the timer for `at` (a hole's gap timeout, or the retry after a failed read).
        case armTimer(at: Int64)
        /// These missing offsets timed out and were skipped (audited).
        case skipped(partition: Int, ClosedRange<Int64>)
    }

    let topic: String
    /// What every MESSAGE of the topic's ephemeral subscriptions shares.
    let messageTemplate: MessageFrame.Template
    var tuning: Tuning
    private(set) var highWatermarks: [Int64] = []
    /// Per partition, the events from `cacheStart` on, by offset; nil where the feed has not
    /// brought the event (yet: the feed may bring offsets out of order).
    private(set) var cache: [Deque<Cached?>] = []
    private(set) var cacheStart: [Int64] = []
    private(set) var subscribers: [MemberID: Subscriber] = [:]
    /// Subscribers to visit, in order.
    private(set) var queue: Deque<MemberID> = []
    /// The deadline the timer is armed for (nil after it ticked).
    private(set) var timerDeadline: Int64?

    init(topic: String, tuning: Tuning = Tuning()) {
        self.topic = topic
        messageTemplate = MessageFrame.Template(topic: topic, group: nil)
        self.tuning = tuning
    }

    var partitionCount: Int { highWatermarks.count }

    /// Whether visits are queued.
    var hasWork: Bool { !queue.isEmpty }

    // MARK: Partitions and new events

    /// The topic has `count` partitions: added ones start at their beginning for everyone.
    mutating func setPartitions(_ count: Int) {
        guard count > highWatermarks.count else { return }
        let added = count - highWatermarks.count
        highWatermarks += Array(repeating: 0, count: added)
        cache += Array(repeating: [], count: added)
        cacheStart += Array(repeating: 1, count: added)
        forEachSubscriber { subscriber, _ in subscriber.next += Array(repeating: 1, count: added) }
    }

    mutating func noteHighWatermark(_ p: Int, _ offset: Int64) {
        guard p < highWatermarks.count, offset > highWatermarks[p] else { return }
        highWatermarks[p] = offset
    }

    /// The change feed brought events: each takes its place in the cache by offset (one far
    /// beyond it starts the cache again), and every subscriber is visited.
    mutating func appended(_ events: some Collection<Event>) {
        guard !events.isEmpty else { return }
        for event in events where event.partition < cache.count {
            let p = event.partition
            noteHighWatermark(p, event.offset)
            let end = cacheStart[p] + Int64(cache[p].count)
            if event.offset < cacheStart[p] || (event.offset < end && cache[p][Int(event.offset - cacheStart[p])] != nil) { continue }
            let frame = MessageFrame(messageTemplate, partition: p, offset: event.offset, attempt: 1, envelope: event.envelopeJSON).bytes
            if event.offset < end {
                cache[p][Int(event.offset - cacheStart[p])] = Cached(event: event, frame: frame)
                continue
            }
            if cache[p].isEmpty || event.offset - end >= Int64(tuning.cacheLimit) {
                cache[p].removeAll()
                cacheStart[p] = event.offset
            } else {
                for _ in end..<event.offset { cache[p].append(nil) }
            }
            cache[p].append(Cached(event: event, frame: frame))
            while cache[p].count > tuning.cacheLimit {
                cache[p].removeFirst()
                cacheStart[p] += 1
            }
        }
        wakeAll()
    }

    /// The safety poll (or a reopened feed) read the high-water marks; returns whether they
    /// showed events the change feed had not brought (a rescan by offset that found something).
    @discardableResult
    mutating func highWatermarksReceived(_ marks: [Int64]) -> Bool {
        var found = false
        for (p, mark) in marks.enumerated() where p < highWatermarks.count {
            if mark > highWatermarks[p] { found = true }
            noteHighWatermark(p, mark)
        }
        wakeAll()
        return found
    }

    /// Something changed for everyone: holes are read again, everyone is visited.
    private mutating func wakeAll() {
        var queue = self.queue
        self.queue = []
        forEachSubscriber { subscriber, id in
            if !subscriber.holes.isEmpty {
                for p in subscriber.holes.keys { subscriber.holes[p]?.waiting = false }
            }
            if !subscriber.queued {
                subscriber.queued = true
                queue.append(id)
            }
        }
        self.queue = queue
    }

    /// Changes every subscriber in place. (Iterating `subscribers.values.indices` instead would
    /// keep a second reference to the dictionary's storage, so that the first change copied
    /// every subscriber; a `Values` subscript read copies the subscriber too.)
    private mutating func forEachSubscriber(_ body: (inout Subscriber, MemberID) -> Void) {
        var index = subscribers.startIndex
        while index != subscribers.endIndex {
            let id = subscribers.keys[index]
            body(&subscribers.values[index], id)
            subscribers.formIndex(after: &index)
        }
    }

    func cached(_ p: Int, _ offset: Int64) -> Cached? {
        guard offset >= cacheStart[p], offset - cacheStart[p] < cache[p].count else { return nil }
        return cache[p][Int(offset - cacheStart[p])]
    }

    // MARK: Subscribers

    /// Adds a subscriber starting at `start` (one offset per partition), or changes one: a
    /// new filter, and with `start` (a reset) new positions.
    mutating func subscribe(_ id: MemberID, filter: SubscriptionFilter, start: [Int64]?) {
        if subscribers[id] != nil {
            subscribers[id]!.filter = filter
            if let start {
                subscribers[id]!.next = start
                subscribers[id]!.holes = [:]
            }
        } else {
            subscribers[id] = Subscriber(filter: filter, next: start ?? highWatermarks.map { $0 + 1 })
        }
        enqueue(id)
    }

    mutating func remove(_ id: MemberID) {
        subscribers[id] = nil
    }

    mutating func flow(_ id: MemberID, credits: Int64) {
        guard subscribers[id] != nil else { return }
        subscribers[id]!.credits = (subscribers[id]!.credits ?? -subscribers[id]!.sentBeforeFirstFlow) + credits
        enqueue(id)
    }

    /// Reads from `from` pause until the queue is down to the level returned; nil while it is
    /// short enough to read more. Only a subscriber catching up from far behind is paced: one at
    /// the tail (where the feed's events are pushed however full its queue is, and the feed may
    /// lag behind the store or bring offsets out of order) reads on, so that one that stopped
    /// reading overflows and is closed (SPEC §6) instead of waiting forever.
    func pauseLevel(backlog: Int, partition p: Int, from: Int64) -> Int? {
        guard backlog > tuning.ephemeralQueueLimit / 2, !atTail(p, from) else { return nil }
        return tuning.ephemeralQueueLimit / 4
    }

    /// Whether `offset` is within the cache's reach of the high-water mark (plus one read).
    func atTail(_ p: Int, _ offset: Int64) -> Bool {
        highWatermarks[p] - offset < Int64(tuning.cacheLimit + tuning.readLimit)
    }

    mutating func waitForDrain(_ id: MemberID) {
        subscribers[id]?.waitingForDrain = true
    }

    /// Its queue drained: it reads again.
    mutating func drained(_ id: MemberID) {
        guard subscribers[id] != nil else { return }
        subscribers[id]!.waitingForDrain = false
        enqueue(id)
    }

    /// It was closed for overflowing its queue: nothing more is sent to it.
    mutating func closed(_ id: MemberID) {
        subscribers[id]?.closed = true
    }

    /// The timer ticked: failed reads are retried and holes read again (a hole past its gap
    /// timeout is then skipped).
    mutating func tickReceived() {
        timerDeadline = nil
        var queue = self.queue
        self.queue = []
        forEachSubscriber { subscriber, id in
            guard subscriber.retryAfterError || !subscriber.holes.isEmpty else { return }
            subscriber.retryAfterError = false
            for p in subscriber.holes.keys { subscriber.holes[p]?.waiting = false }
            if !subscriber.queued {
                subscriber.queued = true
                queue.append(id)
            }
        }
        self.queue = queue
    }

    mutating func enqueue(_ id: MemberID) {
        guard let index = subscribers.index(forKey: id), !subscribers.values[index].queued else { return }
        subscribers.values[index].queued = true
        queue.append(id)
    }

    /// The next subscriber to visit.
    mutating func nextVisit() -> MemberID? {
        while let id = queue.popFirst() {
            guard let index = subscribers.index(forKey: id) else { continue }
            subscribers.values[index].queued = false
            return id
        }
        return nil
    }

    // MARK: Deliveries

    /// Delivers to `id` what the cache holds for it, in offset order per partition, up to its
    /// credits and `readLimit` frames (appended to `frames`); events its filter does not match
    /// are passed over. Says what is left to do.
    mutating func visit(_ id: MemberID, frames: inout [[UInt8]]) -> Visit {
        guard let index = subscribers.index(forKey: id) else { return .idle }
        // Taken out for the visit (an empty one holds its place), so that nothing is copied.
        var subscriber = Subscriber.placeholder
        swap(&subscriber, &subscribers.values[index])
        defer { swap(&subscriber, &subscribers.values[index]) }
        guard !subscriber.closed else { return .idle }
        var delivered = 0
        for p in highWatermarks.indices {
            while subscriber.next[p] <= highWatermarks[p] {
                let offset = subscriber.next[p]
                guard let cached = cached(p, offset) else {
                    if subscriber.retryAfterError || subscriber.holes[p]?.waiting == true { break }
                    if subscriber.waitingForDrain && !atTail(p, offset) { break }
                    return .read(partition: p, from: offset, limit: tuning.readLimit)
                }
                if delivered >= tuning.readLimit { return .again }
                if subscriber.filter.matches(key: cached.event.key, headers: cached.event.headers) {
                    guard subscriber.hasRoom else { return .idle }
                    subscriber.spendCredit()
                    frames.append(cached.frame)
                    delivered += 1
                }
                subscriber.next[p] = offset + 1
                if !subscriber.holes.isEmpty { subscriber.holes[p] = nil }
            }
        }
        return .idle
    }

    /// A read for `id` from `from` returned `events`: those that continue its position are
    /// delivered (as far as its credits go), and it is visited again. Missing offsets below the
    /// high-water mark are a hole (SPEC §3): waited for, and skipped after the gap timeout
    /// (timed from when this hole was first seen).
    mutating func readSucceeded(
        _ id: MemberID, partition p: Int, from: Int64, events: [Event], now: Int64, frames: inout [[UInt8]]
    ) -> ReadOutcome {
        guard let index = subscribers.index(forKey: id), !subscribers.values[index].closed,
            subscribers.values[index].next[p] == from
        else { return .none }  // gone, or moved on (a reset) while the read ran
        if let last = events.last { noteHighWatermark(p, last.offset) }
        if let first = events.first, first.offset == from {
            subscribers.values[index].holes[p] = nil
            for event in events {
                guard event.offset == subscribers.values[index].next[p] else { break }
                if subscribers.values[index].filter.matches(key: event.key, headers: event.headers) {
                    guard subscribers.values[index].hasRoom else { break }
                    subscribers.values[index].spendCredit()
                    frames.append(
                        MessageFrame(messageTemplate, partition: p, offset: event.offset, attempt: 1, envelope: event.envelopeJSON).bytes)
                }
                subscribers.values[index].next[p] = event.offset + 1
            }
            enqueue(id)
            return .none
        }
        guard from <= highWatermarks[p] else { return .none }
        // Everything from `from` up to the first visible event (or the high-water mark) is missing.
        let upTo = events.first.map { $0.offset - 1 } ?? highWatermarks[p]
        if subscribers.values[index].holes[p]?.offset != from {
            subscribers.values[index].holes[p] = Hole(offset: from, upTo: upTo, since: now)
        }
        let hole = subscribers.values[index].holes[p]!
        if now - hole.since >= tuning.gapTimeoutMs {
            // Skip only what was already missing when this hole was first seen.
            let range = from...min(hole.upTo, upTo)
            subscribers.values[index].holes[p] = nil
            subscribers.values[index].next[p] = range.upperBound + 1
            enqueue(id)
            return .skipped(partition: p, range)
        }
        subscribers.values[index].holes[p]!.waiting = true
        return arm(at: hole.since + tuning.gapTimeoutMs)
    }

    /// A read for `id` failed: it reads again when the timer ticks after the retry delay.
    mutating func readFailed(_ id: MemberID, now: Int64) -> ReadOutcome {
        guard subscribers[id] != nil else { return .none }
        subscribers[id]!.retryAfterError = true
        return arm(at: now + tuning.readRetryMs)
    }

    /// Arms the timer for `deadline` unless it is already armed for that time or earlier.
    private mutating func arm(at deadline: Int64) -> ReadOutcome {
        if let current = timerDeadline, current <= deadline { return .none }
        timerDeadline = deadline
        return .armTimer(at: deadline)
    }
}
