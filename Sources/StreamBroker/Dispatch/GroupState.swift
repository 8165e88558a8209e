import DequeModule
import Models

/// The pure state of one consumer group on one topic: per partition the contiguous
/// watermark, the read-ahead buffer, in-flight messages and the redelivery schedule; per
/// member the window and credits; and the dispatcher's schedule (commit batching, the timer,
/// retries). No I/O, no clock: callers pass `now` in milliseconds. The loop drives it through
/// the events of `GroupState+Actions.swift`.
struct GroupState {
    typealias MemberID = ClientConnection.ID

    struct Member {
        let id: MemberID
        var maxInflight: Int
        var ackTimeoutMs: Int64
        var inflight = 0
        /// nil until the first FLOW; then the credits left.
        var credits: Int64?
        /// Messages sent before the first FLOW: they spend that FLOW's credits too, so a
        /// client's window holds from the SUBSCRIBE on, however the two frames interleave
        /// with deliveries.
        var sentBeforeFirstFlow: Int64 = 0
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

    struct Delivery: Equatable {
        let member: MemberID
        let event: Event
        let attempt: Int
    }

    var maxAttempts: Int
    var backoffMs: [Int64]
    var filter = SubscriptionFilter()
    var members: [MemberID: Member] = [:]
    private(set) var order: [MemberID] = []
    var nextMember = 0
    var partitions: [Partition] = []
    static let bufferLimit = 1024
    var tuning: Tuning
    var schedule = Schedule()

    init(maxAttempts: Int, backoffMs: [Int64], tuning: Tuning = Tuning()) {
        self.maxAttempts = maxAttempts
        self.backoffMs = backoffMs
        self.tuning = tuning
    }

    // MARK: Members

    mutating func addMember(_ member: Member) {
        if members[member.id] == nil { order.append(member.id) }
        var member = member
        member.inflight = members[member.id]?.inflight ?? 0
        member.credits = members[member.id]?.credits ?? member.credits
        member.sentBeforeFirstFlow = members[member.id]?.sentBeforeFirstFlow ?? member.sentBeforeFirstFlow
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
        members[id]!.credits = (members[id]!.credits ?? -members[id]!.sentBeforeFirstFlow) + credits
    }

    func hasRoom(_ member: Member) -> Bool {
        if let credits = member.credits, credits <= 0 { return false }
        return member.inflight < member.maxInflight
    }

    var anyRoom: Bool { members.values.contains { hasRoom($0) } }

    mutating func pickMember() -> MemberID? {
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

    /// The safety poll (or a reopened feed) read the high-water marks; returns whether they
    /// showed events of a partition this replica delivers that the change feed had not
    /// brought (a rescan by offset that found something).
    mutating func highWatermarksRead(_ marks: [Int64]) -> Bool {
        var found = false
        for (p, mark) in marks.enumerated() where p < partitions.count {
            if partitions[p].owned && mark > partitions[p].highWatermark { found = true }
            noteHighWatermark(p, mark)
        }
        return found
    }

    // MARK: Watermark

    /// Marks a whole range done without listing its offsets one by one.
    mutating func markDone(_ p: Int, _ range: ClosedRange<Int64>) {
        guard range.upperBound > partitions[p].committed else { return }
        partitions[p].done = partitions[p].done.filter { !range.contains($0) }
        partitions[p].skips.append(range)
        partitions[p].skips.sort { $0.lowerBound < $1.lowerBound }
        advance(p)
    }

    /// Moves the watermark over every contiguous done offset and skipped range.
    mutating func advance(_ p: Int) {
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

    /// Partitions whose watermark moved since the last commit.
    var dirtyPartitions: [Int] {
        partitions.indices.filter { partitions[$0].owned && partitions[$0].committed != partitions[$0].persisted }
    }
}
