import Models

/// The read-ahead buffer and the gap rule (SPEC §3): offsets are reserved before they are
/// written, so a missing offset below the high-water mark is waited for, then skipped.
extension GroupState {
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
            partitions[$0].owned && partitions[$0].buffer.isEmpty && !partitions[$0].waitingForHole
                && partitions[$0].nextOffset <= partitions[$0].highWatermark
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

    /// A wake-up: partitions waiting for a hole read again.
    mutating func recheckHoles() {
        for p in partitions.indices { partitions[p].waitingForHole = false }
    }
}
