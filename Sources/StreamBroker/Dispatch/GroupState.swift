import DequeModule
import Models

/// The pure state of one consumer group (or one ephemeral subscription) on one topic: per
/// partition the contiguous watermark, the read-ahead buffer, in-flight messages and the
/// redelivery schedule; per member the window and credits. No I/O, no clock: callers pass
/// `now` in milliseconds.
struct GroupState {
    typealias MemberID = ClientConnection.ID

    struct Member {
        let id: MemberID
        var maxInflight: Int
        var ackTimeoutMs: Int64
        var inflight = 0
        /// nil until the first FLOW; then the credits left.
        var credits: Int64?
    }

    struct InFlight {
        let event: Event
        let member: MemberID
        let attempt: Int
        let deliveredAt: Int64
        let deadline: Int64
    }

    struct Retry {
        let event: Event
        /// The attempt number of the next delivery.
        let attempt: Int
        let notBefore: Int64
        let reason: String?
    }

    struct Partition {
        let index: Int
        /// Every offset at or below is done.
        var committed: Int64
        /// The watermark the store has.
        var persisted: Int64
        /// The next offset to deliver for the first time.
        var nextOffset: Int64
        var highWatermark: Int64
        var buffer: Deque<Event> = []
        var done: Set<Int64> = []
        var inflight: [Int64: InFlight] = [:]
        var retry: [Int64: Retry] = [:]
        /// Offsets being dead-lettered.
        var deadLettering: Set<Int64> = []
        /// Attempts already made, from the store, for offsets above the watermark.
        var attempts: [Int64: Int] = [:]
        var redeliveries = 0
        var deadLetters = 0
        /// The lowest missing offsets below the high-water mark (`offset...upTo`), and when they
        /// were first seen missing.
        var hole: (offset: Int64, upTo: Int64, since: Int64)?
        /// Ranges above the watermark that count as done (skipped holes, deleted by retention).
        var skips: [ClosedRange<Int64>] = []
        /// Set while waiting for a hole: no re-read until a wake-up or the gap timer.
        var waitingForHole = false
        var gapsSkipped = 0
        /// Whether this replica delivers the partition (it holds its lease, or there are no leases).
        var owned = true
        /// The lease epoch its commits carry.
        var epoch: Int64 = 0

        init(index: Int, start: Int64, highWatermark: Int64) {
            self.index = index
            committed = start - 1
            persisted = start - 1
            nextOffset = start
            self.highWatermark = max(highWatermark, start - 1)
        }

        var readFrom: Int64 { nextOffset + Int64(buffer.count) }
    }

    /// A delivery attempt that ended without an ack.
    struct AttemptEnd: Equatable {
        let partition: Int
        let event: Event
        /// Attempts made so far, including the one that just ended.
        let attempts: Int
        let reason: String?
        let deadLetter: Bool
    }

    struct Delivery {
        let member: MemberID
        let event: Event
        let attempt: Int
    }

    let ephemeral: Bool
    var maxAttempts: Int
    var backoffMs: [Int64]
    var filter = SubscriptionFilter()
    var members: [MemberID: Member] = [:]
    private(set) var order: [MemberID] = []
    private var nextMember = 0
    var partitions: [Partition] = []
    static let bufferLimit = 1024

    init(ephemeral: Bool, maxAttempts: Int, backoffMs: [Int64]) {
        self.ephemeral = ephemeral
        self.maxAttempts = maxAttempts
        self.backoffMs = backoffMs
    }

    // MARK: Members

    mutating func addMember(_ member: Member) {
        if members[member.id] == nil { order.append(member.id) }
        var member = member
        member.inflight = members[member.id]?.inflight ?? 0
        member.credits = members[member.id]?.credits ?? member.credits
        members[member.id] = member
    }

    /// Removes a member; each of its in-flight messages ends one attempt.
    mutating func removeMember(_ id: MemberID, now: Int64) -> [AttemptEnd] {
        guard members.removeValue(forKey: id) != nil else { return [] }
        order.removeAll { $0 == id }
        var ended: [AttemptEnd] = []
        for p in partitions.indices {
            for (offset, entry) in partitions[p].inflight where entry.member == id {
                ended.append(endAttempt(p, offset: offset, reason: "connection closed", delayMs: 0, now: now))
            }
        }
        return ended
    }

    mutating func flow(_ id: MemberID, credits: Int64) {
        guard members[id] != nil else { return }
        members[id]!.credits = (members[id]!.credits ?? 0) + credits
    }

    private func hasRoom(_ member: Member) -> Bool {
        if let credits = member.credits, credits <= 0 { return false }
        return ephemeral || member.inflight < member.maxInflight
    }

    var anyRoom: Bool { members.values.contains { hasRoom($0) } }

    private mutating func pickMember() -> MemberID? {
        guard !order.isEmpty else { return nil }
        for step in 0..<order.count {
            let id = order[(nextMember + step) % order.count]
            if let member = members[id], hasRoom(member) {
                nextMember = (nextMember + step + 1) % order.count
                return id
            }
        }
        return nil
    }

    // MARK: Partitions

    mutating func addPartition(index: Int, start: Int64, highWatermark: Int64, attempts: [Int64: Int] = [:], epoch: Int64 = 0) {
        var partition = Partition(index: index, start: start, highWatermark: highWatermark)
        partition.attempts = attempts
        partition.epoch = epoch
        while partitions.count < index {
            var placeholder = Partition(index: partitions.count, start: 1, highWatermark: 0)
            placeholder.owned = false
            partitions.append(placeholder)
        }
        if index < partitions.count { partitions[index] = partition } else { partitions.append(partition) }
    }

    /// A partition this replica does not deliver (another replica holds its lease).
    mutating func addUnownedPartition(index: Int) {
        addPartition(index: index, start: 1, highWatermark: 0)
        partitions[index].owned = false
    }

    /// Stops delivering a partition: its in-flight messages are forgotten here (the next owner
    /// redelivers from the committed watermark).
    mutating func disown(partition p: Int) {
        guard p < partitions.count else { return }
        for entry in partitions[p].inflight.values { members[entry.member]?.inflight -= 1 }
        var placeholder = Partition(index: p, start: 1, highWatermark: partitions[p].highWatermark)
        placeholder.owned = false
        placeholder.redeliveries = partitions[p].redeliveries
        placeholder.deadLetters = partitions[p].deadLetters
        partitions[p] = placeholder
    }

    var ownedPartitions: [Int] { partitions.indices.filter { partitions[$0].owned } }

    /// Moves a partition to a new start; everything in flight there is forgotten.
    mutating func reset(partition p: Int, start: Int64) {
        for entry in partitions[p].inflight.values { members[entry.member]?.inflight -= 1 }
        let highWatermark = partitions[p].highWatermark
        var fresh = Partition(index: p, start: start, highWatermark: highWatermark)
        fresh.persisted = partitions[p].persisted
        fresh.redeliveries = partitions[p].redeliveries
        fresh.deadLetters = partitions[p].deadLetters
        partitions[p] = fresh
    }

    mutating func noteHighWatermark(_ p: Int, _ offset: Int64) {
        if offset > partitions[p].highWatermark { partitions[p].highWatermark = offset }
    }

    /// Adds events to a partition's read-ahead buffer when they continue it.
    mutating func offer(_ p: Int, _ events: some BidirectionalCollection<Event>) {
        guard let last = events.last, partitions[p].owned else { return }
        noteHighWatermark(p, last.offset)
        var expected = partitions[p].readFrom
        for event in events {
            if event.offset < expected { continue }
            guard event.offset == expected, partitions[p].buffer.count < Self.bufferLimit else { return }
            partitions[p].buffer.append(event)
            expected += 1
        }
    }

    /// Partitions with more stored events than buffered and room to send them.
    func partitionsNeedingRead() -> [Int] {
        guard anyRoom else { return [] }
        return partitions.indices.filter {
            partitions[$0].owned && partitions[$0].buffer.isEmpty && !partitions[$0].waitingForHole && partitions[$0].nextOffset <= partitions[$0].highWatermark
        }
    }

    enum GapOutcome: Equatable {
        case none
        /// Nothing to deliver until the hole fills or the deadline passes.
        case waiting(until: Int64)
        /// These missing offsets timed out and were skipped.
        case skipped(ClosedRange<Int64>)
    }

    /// Applies the gap rule (SPEC §3) after a read from `from` returned `events`: offsets are
    /// reserved before they are written, so a missing offset below the high-water mark may be a
    /// slow writer (wait) or a dead one (skip after `gapTimeoutMs`, timed from when *this* hole
    /// was first seen).
    mutating func noteRead(_ p: Int, from: Int64, events: [Event], now: Int64, gapTimeoutMs: Int64) -> GapOutcome {
        if let first = events.first, first.offset == from {
            partitions[p].hole = nil
            offer(p, events)
            return .none
        }
        guard from <= partitions[p].highWatermark || !events.isEmpty else { return .none }
        if let last = events.last { noteHighWatermark(p, last.offset) }
        // Everything from `from` up to the first visible event (or the high-water mark) is missing.
        let upTo = events.first.map { $0.offset - 1 } ?? partitions[p].highWatermark
        if partitions[p].hole?.offset != from { partitions[p].hole = (from, upTo, now) }
        let hole = partitions[p].hole!
        if now - hole.since >= gapTimeoutMs {
            // Skip only what was already missing when this hole was first seen.
            let range = from...min(hole.upTo, upTo)
            partitions[p].hole = nil
            partitions[p].gapsSkipped += 1
            partitions[p].nextOffset = range.upperBound + 1
            markDone(p, range)
            return .skipped(range)
        }
        let since = hole.since
        partitions[p].waitingForHole = true
        return .waiting(until: since + gapTimeoutMs)
    }

    /// Retention deleted everything below `lowest`: nothing there can be delivered any more.
    mutating func skipDeleted(_ p: Int, below lowest: Int64) {
        guard lowest > partitions[p].nextOffset, partitions[p].buffer.isEmpty else { return }
        let from = partitions[p].nextOffset
        partitions[p].hole = nil
        partitions[p].waitingForHole = false
        partitions[p].nextOffset = lowest
        markDone(p, from...(lowest - 1))
    }

    /// Marks a whole range done without listing its offsets one by one.
    mutating func markDone(_ p: Int, _ range: ClosedRange<Int64>) {
        guard range.upperBound > partitions[p].committed else { return }
        partitions[p].done = partitions[p].done.filter { !range.contains($0) }
        partitions[p].skips.append(range)
        partitions[p].skips.sort { $0.lowerBound < $1.lowerBound }
        advance(p)
    }

    /// Moves the watermark over every contiguous done offset and skipped range.
    private mutating func advance(_ p: Int) {
        while true {
            if partitions[p].done.remove(partitions[p].committed + 1) != nil {
                partitions[p].committed += 1
            } else if let first = partitions[p].skips.first, first.lowerBound <= partitions[p].committed + 1 {
                partitions[p].committed = max(partitions[p].committed, first.upperBound)
                partitions[p].skips.removeFirst()
            } else {
                return
            }
        }
    }

    /// A wake-up: partitions waiting for a hole read again.
    mutating func recheckHoles() {
        for p in partitions.indices { partitions[p].waitingForHole = false }
    }

    // MARK: Delivery

    /// Assigns due redeliveries and buffered events to members with room, in offset order per
    /// partition. Events that do not pass the filter are marked done.
    mutating func takeDeliveries(now: Int64) -> [Delivery] {
        var deliveries: [Delivery] = []
        for p in partitions.indices where partitions[p].owned {
            if !partitions[p].retry.isEmpty {
                for offset in partitions[p].retry.keys.sorted() {
                    guard let retry = partitions[p].retry[offset], retry.notBefore <= now else { continue }
                    guard let member = pickMember() else { break }
                    partitions[p].retry[offset] = nil
                    partitions[p].redeliveries += 1
                    deliveries.append(deliver(p, retry.event, attempt: retry.attempt, to: member, now: now))
                }
            }
            while let event = partitions[p].buffer.first {
                if !filter.matches(key: event.key, headers: event.headers) {
                    partitions[p].buffer.removeFirst()
                    partitions[p].nextOffset = event.offset + 1
                    markDone(p, event.offset)
                    continue
                }
                guard let member = pickMember() else { break }
                partitions[p].buffer.removeFirst()
                partitions[p].nextOffset = event.offset + 1
                let attempt = (partitions[p].attempts[event.offset] ?? 0) + 1
                deliveries.append(deliver(p, event, attempt: attempt, to: member, now: now))
            }
        }
        return deliveries
    }

    private mutating func deliver(_ p: Int, _ event: Event, attempt: Int, to id: MemberID, now: Int64) -> Delivery {
        if members[id]!.credits != nil { members[id]!.credits! -= 1 }
        if ephemeral {
            markDone(p, event.offset)
        } else {
            members[id]!.inflight += 1
            partitions[p].inflight[event.offset] = InFlight(
                event: event, member: id, attempt: attempt, deliveredAt: now, deadline: now + members[id]!.ackTimeoutMs)
        }
        return Delivery(member: id, event: event, attempt: attempt)
    }

    // MARK: Acks

    /// Marks a message done; true when it was in flight or waiting for redelivery.
    @discardableResult
    mutating func ack(partition p: Int, offset: Int64) -> Bool {
        guard p < partitions.count else { return false }
        if let entry = partitions[p].inflight.removeValue(forKey: offset) {
            members[entry.member]?.inflight -= 1
        } else if partitions[p].retry.removeValue(forKey: offset) == nil {
            return false
        }
        markDone(p, offset)
        return true
    }

    /// Ends the attempt of an in-flight message; it comes back after `delayMs` (or the backoff).
    mutating func nack(partition p: Int, offset: Int64, reason: String?, delayMs: Int64?, now: Int64) -> AttemptEnd? {
        guard p < partitions.count, partitions[p].inflight[offset] != nil else { return nil }
        return endAttempt(p, offset: offset, reason: reason ?? "nack", delayMs: delayMs, now: now)
    }

    /// Ends every attempt whose ack timeout passed.
    mutating func expire(now: Int64) -> [AttemptEnd] {
        var ended: [AttemptEnd] = []
        for p in partitions.indices {
            let expired = partitions[p].inflight.filter { $0.value.deadline <= now }.keys.sorted()
            for offset in expired {
                ended.append(endAttempt(p, offset: offset, reason: "ack timeout", delayMs: nil, now: now))
            }
        }
        return ended
    }

    private mutating func endAttempt(_ p: Int, offset: Int64, reason: String?, delayMs: Int64?, now: Int64) -> AttemptEnd {
        let entry = partitions[p].inflight.removeValue(forKey: offset)!
        members[entry.member]?.inflight -= 1
        let attempts = entry.attempt
        partitions[p].attempts[offset] = attempts
        if attempts >= maxAttempts {
            partitions[p].deadLettering.insert(offset)
            return AttemptEnd(partition: p, event: entry.event, attempts: attempts, reason: reason, deadLetter: true)
        }
        let delay = delayMs ?? backoff(afterAttempt: attempts)
        partitions[p].retry[offset] = Retry(event: entry.event, attempt: attempts + 1, notBefore: now + delay, reason: reason)
        return AttemptEnd(partition: p, event: entry.event, attempts: attempts, reason: reason, deadLetter: false)
    }

    func backoff(afterAttempt attempt: Int) -> Int64 {
        guard !backoffMs.isEmpty else { return 0 }
        return backoffMs[min(max(attempt - 1, 0), backoffMs.count - 1)]
    }

    /// Completes a dead-lettering: the message counts as done.
    mutating func deadLettered(partition p: Int, offset: Int64) {
        guard partitions[p].deadLettering.remove(offset) != nil else { return }
        partitions[p].deadLetters += 1
        markDone(p, offset)
    }

    /// Marks an offset done and advances the contiguous watermark.
    mutating func markDone(_ p: Int, _ offset: Int64) {
        guard offset > partitions[p].committed else { return }
        partitions[p].attempts[offset] = nil
        if offset == partitions[p].committed + 1 {
            partitions[p].committed = offset
            advance(p)
        } else {
            partitions[p].done.insert(offset)
        }
    }

    // MARK: Timers and commits

    /// The earliest ack deadline or redelivery time, if any.
    func nextDeadline() -> Int64? {
        var earliest: Int64?
        for partition in partitions {
            for entry in partition.inflight.values where earliest == nil || entry.deadline < earliest! { earliest = entry.deadline }
            for retry in partition.retry.values where earliest == nil || retry.notBefore < earliest! { earliest = retry.notBefore }
        }
        return earliest
    }

    /// Partitions whose watermark moved since the last commit.
    var dirtyPartitions: [Int] {
        partitions.indices.filter { partitions[$0].owned && partitions[$0].committed != partitions[$0].persisted }
    }
}
