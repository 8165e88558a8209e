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
        /// Changed in the open transaction (and so in ``SQLiteWriterState/dirty``).
        var dirty: Bool

        /// Sets the next offset; true when the counter was clean until now.
        mutating func reserve(next value: Int64) -> Bool {
            defer { (next, dirty) = (value, true) }
            return !dirty
        }
    }

    /// Committed or pending next offsets.
    private var counters: [StoreKey: Counter] = [:]
    /// Counters changed in the open transaction, in the order they first changed.
    private var dirty: [StoreKey] = []
    /// Events inserted in the open transaction, for the change feed after `COMMIT`.
    private(set) var inserted: [Event] = []

    /// The latest `ts` given to an event since the store opened, at least that of the newest
    /// event of every partition appended to since: ``timestamp(_:)`` never goes below it.
    private var latestTs: Int64 = 0

    /// The next offset of `counter`: cached, else read from the table (1 for a new partition).
    func nextOffset(_ counter: StoreKey, _ db: SQLiteConnection) throws -> Int64 {
        if let cached = counters[counter] { return cached.next }
        // The partition's first append since the store opened (or since a rollback): its newest
        // event's time counts for ``timestamp(_:)`` from now on.
        if case .counter(let topic, let partition) = counter {
            try db.query(
                "SELECT ts FROM events WHERE topic = ? AND partition = ? ORDER BY offset DESC LIMIT 1", [.text(topic), .int(Int64(partition))]
            ) { latestTs = max(latestTs, $0.int(0)) }
        }
        return try Self.storedNextOffset(counter, db) ?? 1
    }

    /// The time to store for events appended now: the clock's `now`, or the latest time given
    /// so far when the clock is behind it (jobs stamped on different threads commit in another
    /// order; a clock may be set back). So, in every partition, `ts` never goes down as the
    /// offset goes up — what ``SQLiteStore/firstOffset(topic:partition:atOrAfter:)`` and
    /// retention search on, instead of keeping an index on `ts`. Call it after
    /// ``nextOffset(_:_:)`` for each partition the job appends to.
    func timestamp(_ now: Int64) -> Int64 {
        latestTs = max(latestTs, now)
        return latestTs
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

    /// Records a job's reservation; call it only once the job cannot fail any more.
    func reserved(_ counter: StoreKey, next value: Int64) {
        if counters[counter, default: Counter(next: value, dirty: false)].reserve(next: value) { dirty.append(counter) }
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
