import Models

/// What the writer keeps in memory between the jobs of a transaction: the partitions'
/// `counters.next_offset` (cached, and written once per transaction rather than per event) and
/// the events to publish on the change feed once the transaction committed.
///
/// - Important: used only on the writer thread; ``rolledBack()`` is called there when a
///   transaction is rolled back.
final class SQLiteWriterState: @unchecked Sendable {
    private struct Counter {
        var next: Int64
        /// The `ts` of the partition's newest event (stored, or given in the open transaction).
        var newestTs: Int64
        /// Changed in the open transaction (and so in ``SQLiteWriterState/dirty``).
        var dirty: Bool

        /// Sets the next offset and the newest time; true when the counter was clean until now.
        mutating func reserve(next value: Int64, ts: Int64) -> Bool {
            defer { (next, newestTs, dirty) = (value, max(newestTs, ts), true) }
            return !dirty
        }
    }

    /// Committed or pending next offsets, and the partitions' newest times.
    private var counters: [StoreKey: Counter] = [:]
    /// Counters changed in the open transaction, in the order they first changed.
    private var dirty: [StoreKey] = []
    /// Events inserted in the open transaction, for the change feed after `COMMIT`.
    private(set) var inserted: [Event] = []

    /// Where the partition of `counter` stands: its next offset (1 for a new partition) and the
    /// `ts` of its newest event (`Int64.min` for none) — cached, else read from the tables.
    ///
    /// A job stamps its events with the clock's time or, when the clock is behind it, the newest
    /// time of the partitions it appends to (jobs stamped on different threads commit in another
    /// order; a clock may be set back). So in every partition `ts` never goes down as the offset
    /// goes up — what ``SQLiteStore/firstOffset(topic:partition:atOrAfter:_:)`` and retention
    /// search on, instead of keeping an index on `ts`.
    func position(_ counter: StoreKey, _ db: SQLiteConnection) throws -> (next: Int64, newestTs: Int64) {
        if let cached = counters[counter] { return (cached.next, cached.newestTs) }
        var newestTs = Int64.min
        if case .counter(let topic, let partition) = counter {
            try db.query(
                "SELECT ts FROM events WHERE topic = ? AND partition = ? ORDER BY offset DESC LIMIT 1", [.text(topic), .int(Int64(partition))]
            ) { newestTs = $0.int(0) }
        }
        let next = try Self.storedNextOffset(counter, db) ?? 1
        counters[counter] = Counter(next: next, newestTs: newestTs, dirty: false)
        return (next, newestTs)
    }

    /// The next offset as the `counters` table holds it (nil: no row yet).
    static func storedNextOffset(_ counter: StoreKey, _ db: SQLiteConnection) throws -> Int64? {
        let select = try db.statement(.selectCounter)
        select.bind(1, counter.id)
        var stored: Int64?
        try select.query { stored = $0.int(0) }
        return stored
    }

    /// The next offset including this transaction's reservations, without reading the table.
    func cachedNextOffset(_ counter: StoreKey) -> Int64? { counters[counter]?.next }

    /// Records a job's reservation and the time it stamped its events with; call it only once
    /// the job cannot fail any more.
    func reserved(_ counter: StoreKey, next value: Int64, ts: Int64) {
        if counters[counter, default: Counter(next: value, newestTs: ts, dirty: false)].reserve(next: value, ts: ts) {
            dirty.append(counter)
        }
    }

    func insertedEvents(_ events: [Event]) {
        inserted.append(contentsOf: events)
    }

    func insertedEvent(_ event: Event) {
        inserted.append(event)
    }

    /// Writes the counters the open transaction changed (called once, before `COMMIT`).
    func writeCounters(_ db: SQLiteConnection) throws {
        guard !dirty.isEmpty else { return }
        let upsert = try db.statement(.upsertCounter)
        for counter in dirty {
            upsert.bind(1, counter.id)
            upsert.bind(2, counters[counter]!.next)
            try upsert.run()
        }
    }

    /// After `COMMIT`: the counters are stored; returns the events for the change feed.
    func committed() -> [Event] {
        for counter in dirty { counters[counter]?.dirty = false }
        dirty.removeAll(keepingCapacity: true)
        let events = inserted
        inserted = []
        return events
    }

    /// After a rollback: nothing pending was stored, and the cache may be ahead of the table.
    func rolledBack() {
        counters.removeAll()
        dirty.removeAll()
        inserted.removeAll()
    }
}
