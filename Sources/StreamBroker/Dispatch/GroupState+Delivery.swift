import Models

/// Deliveries, acks and the ends of attempts: redelivery, backoff and dead letters (SPEC §6).
extension GroupState {
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
        if members[id]!.credits != nil {
            members[id]!.credits! -= 1
        } else {
            members[id]!.sentBeforeFirstFlow += 1
        }
        members[id]!.inflight += 1
        partitions[p].inflight[event.offset] = InFlight(
            event: event, member: id, attempt: attempt, deliveredAt: now, deadline: now + members[id]!.ackTimeoutMs)
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

    mutating func endAttempt(_ p: Int, offset: Int64, reason: String?, delayMs: Int64?, now: Int64) -> AttemptEnd {
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

    // MARK: Timers

    /// The earliest ack deadline or redelivery time, if any.
    func nextDeadline() -> Int64? {
        var earliest: Int64?
        for partition in partitions {
            for entry in partition.inflight.values where earliest == nil || entry.deadline < earliest! { earliest = entry.deadline }
            for retry in partition.retry.values where earliest == nil || retry.notBefore < earliest! { earliest = retry.notBefore }
        }
        return earliest
    }
}
