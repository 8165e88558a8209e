import Models

/// The dispatcher as a state machine (in the style of postgres-nio's connection state machine):
/// the loop reports events — inputs, the results of the store calls it was asked to make, the
/// timer — and executes the actions returned. Time is an input (`now`, milliseconds on the
/// loop's clock), so every rule about time — commit batching, ack timeouts, redelivery backoff,
/// gap timers, retry delays — is decided here and tested without a clock.
extension GroupState {
    /// The settings the decisions use.
    struct Tuning: Sendable {
        var commitIntervalMs: Int64 = 100
        var gapTimeoutMs: Int64 = 2_000
        /// Delay before reading again after a failed read.
        var readRetryMs: Int64 = 500
        /// Delay before publishing a dead letter again after a failed publish.
        var deadLetterRetryMs: Int64 = 1_000
        /// A group reads ahead in batches: the buffer is bounded by `bufferLimit`, so a group
        /// that acks one message at a time still reads hundreds per store round trip.
        var groupReadLimit = 256
        /// Read rounds in one pump, before other inputs get their turn.
        var maxRounds = 64
        /// The topic has retention: offsets below the lowest stored one were deleted, not
        /// reserved by a slow writer.
        var retention = false
        /// Acks may be queued without waking the loop while ``GroupState/acksMayWait`` holds
        /// (the loop's mailbox does this): the timer then wakes the loop within the commit
        /// interval while messages are in flight, so that queued acks are taken and committed.
        var acksDeferred = false

        init() {}

        init(_ settings: BrokerSettings) {
            acksDeferred = settings.acksDeferred
            commitIntervalMs = settings.commitIntervalMs
            gapTimeoutMs = settings.gapTimeoutMs
        }
    }

    enum Action: Equatable {
        /// Read up to `limit` events from `from`; answer ``readSucceeded(partition:from:events:now:)``
        /// or ``readFailed(now:)``.
        case read(partition: Int, from: Int64, limit: Int)
        /// Send MESSAGE frames (maybe none); answer ``framesSent(now:)``.
        case send([Delivery])
        /// Ask the store for the lowest offset it still has; answer
        /// ``lowestOffsetRead(partition:from:lowest:now:)`` or ``readFailed(now:)``.
        case readLowestOffset(partition: Int, from: Int64)
        /// Write these watermarks, one by one; answer ``commitsCompleted(_:now:)``.
        case commit([Commit])
        /// Forget the stored attempt counts at or below the new watermark (best effort).
        case clearAttempts(partition: Int, upTo: Int64)
        /// Store the attempts of a message that goes again; on success answer
        /// ``attemptsPersisted(partition:offset:)``.
        case persistAttempts(AttemptEnd)
        /// Publish to the DLQ; answer ``deadLetterPublished(_:now:)`` or ``deadLetterFailed(_:now:)``.
        case deadLetter(AttemptEnd)
        /// Record a decision (metrics, log, `system.bus.audit`).
        case audit(Audit)
        /// A partition is gone (a commit was fenced, or loading it failed): tell the lease coordinator.
        case partitionLost(partition: Int, epoch: Int64)
        /// Tick at `at`, replacing the deadline armed before.
        case armTimer(at: Int64)
    }

    enum Audit: Equatable {
        case redelivery(AttemptEnd)
        case gapSkipped(partition: Int, ClosedRange<Int64>)
    }

    struct Commit: Equatable {
        let partition: Int
        let committed: Int64
        let epoch: Int64
    }

    enum CommitOutcome: Equatable {
        case committed
        /// Refused: another replica holds the partition at a newer epoch.
        case fenced
        case failed
    }

    /// The dispatcher's timing and retry state.
    struct Schedule {
        /// When the batched commit is due.
        var commitDue: Int64?
        /// The deadline the timer is armed for (nil after it ticked).
        var timerDeadline: Int64?
        /// A read failed: no reads until the next tick.
        var retryAfterError = false
        /// Dead letters whose DLQ publish failed; only the publish is retried, when due.
        var pendingDeadLetters: [(end: AttemptEnd, due: Int64)] = []
        /// Offsets with attempts in the store, per partition, until the watermark passes them.
        var storedAttempts: [Int: Set<Int64>] = [:]
        /// Set while a pump runs.
        var pump: Pump?
    }

    /// One pass of reads and deliveries: rounds of (deliver what is there, read what is missing)
    /// while reads make progress.
    struct Pump {
        var rounds = 0
        var progressed = false
        var toRead: [Int] = []
        var flushing = false
    }

    // MARK: Inputs

    mutating func ackReceived(partition: Int, offset: Int64, now: Int64) {
        if ack(partition: partition, offset: offset) { scheduleCommit(now: now) }
    }

    mutating func nackReceived(partition: Int, offset: Int64, reason: String?, delayMs: Int64?, now: Int64) -> [Action] {
        guard let ended = nack(partition: partition, offset: offset, reason: reason, delayMs: delayMs, now: now) else { return [] }
        return attemptsEnded([ended], now: now)
    }

    mutating func memberLeft(_ id: MemberID, now: Int64) -> [Action] {
        attemptsEnded(removeMember(id, now: now), now: now)
    }

    /// The timer ticked (or the loop was woken): holes are read again, a failed read is retried.
    mutating func tickReceived() {
        recheckHoles()
        schedule.retryAfterError = false
        schedule.timerDeadline = nil
    }

    /// Loading an acquired partition failed: give it back.
    mutating func partitionLoadFailed(partition: Int, epoch: Int64) -> [Action] {
        disown(partition: partition)
        return [.partitionLost(partition: partition, epoch: epoch)]
    }

    // MARK: Pump

    /// After every input: retries due dead letters, expires ack deadlines once the timer is due,
    /// then delivers and reads in rounds; ends by committing when due and arming the timer.
    mutating func pumpRequested(now: Int64) -> [Action] {
        var actions: [Action] = []
        if let first = schedule.pendingDeadLetters.first, first.due <= now {
            let due = schedule.pendingDeadLetters.filter { $0.due <= now }.map(\.end)
            schedule.pendingDeadLetters.removeAll { $0.due <= now }
            actions += attemptsEnded(due, now: now)
        }
        // The armed timer is never later than the earliest ack deadline (deliveries only move it
        // earlier), so while it lies ahead nothing can have expired: skip scanning the whole
        // in-flight map on every ack.
        if schedule.timerDeadline.map({ $0 <= now }) ?? true {
            actions += attemptsEnded(expire(now: now), now: now)
        }
        schedule.pump = Pump()
        return actions + startRound(now: now)
    }

    private mutating func startRound(now: Int64) -> [Action] {
        schedule.pump?.rounds += 1
        schedule.pump?.progressed = false
        let deliveries = takeDeliveries(now: now)
        var actions: [Action] = [.send(deliveries)]
        actions += noteDeadlines(of: deliveries, now: now)
        if schedule.commitDue == nil, !dirtyPartitions.isEmpty { scheduleCommit(now: now) }
        return actions
    }

    /// New deliveries add deadlines; only an earlier one needs the timer moved. (Acks only
    /// remove deadlines: the timer then fires early and everything is recomputed.)
    private mutating func noteDeadlines(of deliveries: [Delivery], now: Int64) -> [Action] {
        guard !deliveries.isEmpty else { return [] }
        var shortest = Int64.max
        var seen: Set<MemberID> = []
        for delivery in deliveries where seen.insert(delivery.member).inserted {
            shortest = min(shortest, members[delivery.member]?.ackTimeoutMs ?? shortest)
        }
        return shortest < .max ? arm(at: now + shortest) : []
    }

    /// The frames of a round left.
    mutating func framesSent(now: Int64) -> [Action] {
        guard schedule.pump != nil else { return [] }
        if schedule.retryAfterError { return finishPump(now: now) }
        let needRead = partitionsNeedingRead()
        guard !needRead.isEmpty else { return finishPump(now: now) }
        schedule.pump?.toRead = needRead
        return nextRead(now: now)
    }

    private mutating func nextRead(now: Int64) -> [Action] {
        guard let pump = schedule.pump else { return [] }
        guard let partition = pump.toRead.first else {
            if pump.progressed && pump.rounds < tuning.maxRounds { return startRound(now: now) }
            return finishPump(now: now)
        }
        schedule.pump?.toRead.removeFirst()
        return [.read(partition: partition, from: partitions[partition].readFrom, limit: tuning.groupReadLimit)]
    }

    mutating func readSucceeded(partition p: Int, from: Int64, events: [Event], now: Int64) -> [Action] {
        var actions: [Action] = []
        switch noteRead(p, from: from, events: events, now: now, gapTimeoutMs: tuning.gapTimeoutMs) {
        case .none:
            if !events.isEmpty { schedule.pump?.progressed = true }
        case .waiting(let deadline):
            // With retention, a hole first seen now may be deleted events: ask the store.
            if tuning.retention, partitions[p].hole?.since == now {
                return [.readLowestOffset(partition: p, from: from)]
            }
            actions += arm(at: deadline)
        case .skipped(let range):
            schedule.pump?.progressed = true
            scheduleCommit(now: now)
            actions.append(.audit(.gapSkipped(partition: p, range)))
        }
        return actions + nextRead(now: now)
    }

    mutating func lowestOffsetRead(partition p: Int, from: Int64, lowest: Int64?, now: Int64) -> [Action] {
        var actions: [Action] = []
        if let lowest, lowest > from {
            skipDeleted(p, below: lowest)
            scheduleCommit(now: now)
            schedule.pump?.progressed = true
        } else if let hole = partitions[p].hole {
            actions += arm(at: hole.since + tuning.gapTimeoutMs)
        }
        return actions + nextRead(now: now)
    }

    /// A read (or the lowest-offset query) failed: no more reads until the retry delay passed.
    mutating func readFailed(now: Int64) -> [Action] {
        schedule.retryAfterError = true
        return arm(at: now + tuning.readRetryMs) + nextRead(now: now)
    }

    private mutating func finishPump(now: Int64) -> [Action] {
        guard schedule.pump != nil else { return [] }
        if let due = schedule.commitDue, due <= now {
            schedule.pump?.flushing = true
            return flushCommits()
        }
        return armAfterPump(now: now)
    }

    private mutating func armAfterPump(now: Int64) -> [Action] {
        schedule.pump = nil
        // Acks that may be queued without a wake-up are taken at the latest by this sweep.
        let sweep = tuning.acksDeferred && acksMayWait && partitions.contains { !$0.inflight.isEmpty } ? now + tuning.commitIntervalMs : nil
        if schedule.timerDeadline == nil {
            let candidates = [nextDeadline(), schedule.commitDue, schedule.pendingDeadLetters.map(\.due).min(), sweep]
            return candidates.compactMap { $0 }.min().map { arm(at: $0) } ?? []
        }
        return [schedule.commitDue, sweep].compactMap { $0 }.min().map { arm(at: $0) } ?? []
    }

    /// Whether an ack may wait for the loop's next wake-up instead of waking it: no event
    /// waits for room in a window (buffered, to be retried, or not read yet), so an ack would
    /// only move the watermark, which is committed in batches anyway. A group whose consumers
    /// keep up then wakes once per new event instead of once more per ack.
    var acksMayWait: Bool {
        !partitions.contains { $0.owned && (!$0.buffer.isEmpty || !$0.retry.isEmpty || $0.readFrom <= $0.highWatermark) }
    }

    // MARK: Attempts that ended

    /// Dead letters go to the DLQ; other ended attempts are persisted, audited, and the timer
    /// is armed for their redelivery.
    mutating func attemptsEnded(_ ended: [AttemptEnd], now: Int64) -> [Action] {
        var actions: [Action] = []
        for end in ended {
            if end.deadLetter {
                actions.append(.deadLetter(end))
            } else {
                actions += [.persistAttempts(end), .audit(.redelivery(end))]
            }
            // A redelivery due now goes in the pump that follows every input; a later one needs the timer.
            if let retry = partitions[end.partition].retry[end.event.offset], retry.notBefore > now { actions += arm(at: retry.notBefore) }
        }
        return actions
    }

    mutating func attemptsPersisted(partition: Int, offset: Int64) {
        schedule.storedAttempts[partition, default: []].insert(offset)
    }

    mutating func deadLetterPublished(_ end: AttemptEnd, now: Int64) {
        deadLettered(partition: end.partition, offset: end.event.offset)
        scheduleCommit(now: now)
    }

    /// Only the DLQ publish is retried; the message does not go back to a consumer.
    mutating func deadLetterFailed(_ end: AttemptEnd, now: Int64) -> [Action] {
        let due = now + tuning.deadLetterRetryMs
        schedule.pendingDeadLetters.append((end, due))
        return arm(at: due)
    }

    // MARK: Commits and the timer

    mutating func scheduleCommit(now: Int64) {
        guard schedule.commitDue == nil else { return }
        schedule.commitDue = now + tuning.commitIntervalMs
    }

    /// Commits every moved watermark now.
    mutating func flushCommits() -> [Action] {
        schedule.commitDue = nil
        return [.commit(dirtyPartitions.map { Commit(partition: $0, committed: partitions[$0].committed, epoch: partitions[$0].epoch) })]
    }

    mutating func commitsCompleted(_ results: [(commit: Commit, outcome: CommitOutcome)], now: Int64) -> [Action] {
        var actions: [Action] = []
        for (commit, outcome) in results {
            let p = commit.partition
            switch outcome {
            case .committed:
                partitions[p].persisted = commit.committed
                if let stored = schedule.storedAttempts[p], stored.contains(where: { $0 <= commit.committed }) {
                    actions.append(.clearAttempts(partition: p, upTo: commit.committed))
                    schedule.storedAttempts[p] = stored.filter { $0 > commit.committed }
                }
            case .fenced:
                // Another replica holds this partition now: stop delivering it at once.
                disown(partition: p)
                actions.append(.partitionLost(partition: p, epoch: commit.epoch))
            case .failed:
                scheduleCommit(now: now)
            }
        }
        if schedule.pump?.flushing == true { actions += armAfterPump(now: now) }
        return actions
    }

    /// Arms the timer for `deadline` unless it is already armed for that time or earlier.
    private mutating func arm(at deadline: Int64) -> [Action] {
        if let current = schedule.timerDeadline, current <= deadline { return [] }
        schedule.timerDeadline = deadline
        return [.armTimer(at: deadline)]
    }
}
