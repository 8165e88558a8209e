import Models

/// The log: appends (on the writer, with group commit), reads, retention and high-water marks.
extension SQLiteStore {
    public func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void) {
        // The change feed hears of the new events from the writer's `afterCommit`, once per
        // transaction.
        let job = AppendJob(store: self, requests: requests, ts: clock(), completion: completion)
        writer.submit(job)
    }

    /// Inserts the events of one job; the counters and the change feed are left to the end of
    /// the transaction (``SQLiteWriterState``).
    fileprivate func appendOnWriter(_ requests: [AppendRequest], ts now: Int64, _ db: SQLiteConnection) throws -> [AppendResult] {
        let state = writerState
        // The common case, one publish: no plan, and a publisher's id is looked up only when the
        // insert finds it taken (the unique index looks anyway).
        if requests.count == 1 {
            let request = requests[0]
            let counter = StoreKey.counter(topic: request.topic, partition: request.partition)
            let (offset, newestTs) = try state.position(counter, db)
            let ts = max(now, newestTs)  // never below the partition's newest (`position`)
            let event = Event(
                topic: request.topic, partition: request.partition, offset: offset, id: request.id, ts: ts,
                key: request.key, headers: request.headers, payload: request.payload)
            guard try insert(event, db, unlessIDTaken: request.idFromClient) else {
                guard let stored = try findByID(topic: request.topic, id: request.id, db) else {
                    throw BrokerError(.internal, "event \(request.id) of \(request.topic) is neither new nor stored")
                }
                return [AppendResult(event: stored, duplicate: true)]
            }
            // Only once this job cannot fail any more.
            state.reserved(counter, next: offset + 1, ts: ts)
            state.insertedEvent(event)
            return [AppendResult(event: event, duplicate: false)]
        }
        var stored: [Event] = []
        for (topic, ids) in AppendPlan.idsToLookUp(requests) {
            for id in ids { try findByID(topic: topic, id: id, db).map { stored.append($0) } }
        }
        let plan = AppendPlan(requests, stored: stored)
        var first: [StoreKey: Int64] = [:]
        var ts = now  // never below the newest of the partitions appended to (`position`)
        for (counter, _) in plan.reservations {
            let position = try state.position(counter, db)
            first[counter] = position.next
            ts = max(ts, position.newestTs)
        }
        let events = plan.events(firstOffsets: first, ts: ts)
        for event in events { try insert(event, db) }
        let results = try plan.results(inserted: events)
        // Only once this job cannot fail any more.
        for (counter, count) in plan.reservations { state.reserved(counter, next: first[counter]! + count, ts: ts) }
        state.insertedEvents(events)
        return results
    }

    /// - Returns: false when `unlessIDTaken` and the topic already holds an event with the id
    ///   (nothing inserted).
    @discardableResult
    private func insert(_ event: Event, _ db: SQLiteConnection, unlessIDTaken: Bool = false) throws -> Bool {
        let insert = try db.statement(unlessIDTaken ? .insertEventUnlessIDTaken : .insertEvent)
        insert.bind(1, event.topic)
        insert.bind(2, Int64(event.partition))
        insert.bind(3, event.offset)
        insert.bind(4, event.id)
        insert.bind(5, event.ts)
        insert.bind(6, event.key)
        insert.bind(7, blob: event.headers?.jsonBytes)
        insert.bind(8, blob: event.payload.bytes)
        try insert.run()
        return !unlessIDTaken || db.changes > 0
    }

    private func findByID(topic: String, id: String, _ db: SQLiteConnection) throws -> Event? {
        let select = try db.statement(.selectEventByID)
        select.bind(1, topic)
        select.bind(2, id)
        var found: Event?
        try select.query { found = Self.event(from: $0) }
        return found
    }

    static func event(from row: SQLiteConnection.Row) -> Event {
        var headers: Headers?
        if let bytes = row.bytes(6), let parsed = try? RawJSON(trusted: bytes).parsed(), let decoded = try? Headers.decode(parsed) {
            headers = decoded
        }
        return Event(
            topic: row.text(0) ?? "", partition: Int(row.int(1)), offset: row.int(2), id: row.text(3) ?? "",
            ts: row.int(4), key: row.isNull(5) ? nil : row.text(5), headers: headers,
            payload: RawJSON(trusted: row.bytes(7) ?? Array("null".utf8)))
    }

    public func read(topic: String, partition: Int, from: Int64, limit: Int) async throws -> [Event] {
        try await read { db in
            let select = try db.statement(.readEvents)
            select.bind(1, topic)
            select.bind(2, Int64(partition))
            select.bind(3, from)
            select.bind(4, Int64(limit))
            var events: [Event] = []
            try select.query { events.append(Self.event(from: $0)) }
            return events
        }
    }

    public func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64) async throws -> Int64? {
        try await read { db in try Self.firstOffset(topic: topic, partition: partition, atOrAfter: timestamp, db) }
    }

    /// The first offset of the partition whose event has `ts >= timestamp`: a binary search
    /// over offsets, each step one seek by the primary key — in a partition `ts` never goes down
    /// as the offset goes up (``SQLiteWriterState/position(_:_:)``), so no index on `ts` is kept.
    /// Gaps in the offsets (events deleted) are skipped over.
    static func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64, _ db: SQLiteConnection) throws -> Int64? {
        let key: [SQLValue] = [.text(topic), .int(Int64(partition))]
        func event(_ sql: String, _ values: [SQLValue] = []) throws -> (offset: Int64, ts: Int64)? {
            var found: (offset: Int64, ts: Int64)?
            try db.query(sql, key + values) { found = ($0.int(0), $0.int(1)) }
            return found
        }
        guard
            let newest = try event("SELECT offset, ts FROM events WHERE topic = ? AND partition = ? ORDER BY offset DESC LIMIT 1"),
            newest.ts >= timestamp,
            let oldest = try event("SELECT offset, ts FROM events WHERE topic = ? AND partition = ? ORDER BY offset LIMIT 1")
        else { return nil }
        // The answer is in [low, high] or is `found`.
        var found = newest.offset
        var (low, high) = (oldest.offset, newest.offset - 1)
        while low <= high {
            let middle = low + (high - low) / 2
            guard
                let next = try event(
                    "SELECT offset, ts FROM events WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT 1", [.int(middle)]),
                next.offset <= high
            else {
                high = middle - 1  // nothing stored in [middle, high]
                continue
            }
            if next.ts >= timestamp {
                found = next.offset
                high = middle - 1
            } else {
                low = next.offset + 1
            }
        }
        return found
    }

    public func lowestOffset(topic: String, partition: Int) async throws -> Int64? {
        try await read { db in
            var offset: Int64?
            try db.query(
                "SELECT MIN(offset) FROM events WHERE topic = ? AND partition = ?",
                [.text(topic), .int(Int64(partition))]
            ) { row in if !row.isNull(0) { offset = row.int(0) } }
            return offset
        }
    }

    public func deleteEvents(topic: String, olderThan cutoff: Int64) async throws -> Int {
        try await write { db in
            // Partition by partition, the events before the first one to keep: a range of the
            // primary key (see `firstOffset`).
            var deleted = 0
            var partition: Int64 = -1
            while true {
                var next: Int64?
                try db.query(
                    "SELECT partition FROM events WHERE topic = ? AND partition > ? ORDER BY partition LIMIT 1", [.text(topic), .int(partition)]
                ) { next = $0.int(0) }
                guard let next else { return deleted }
                partition = next
                let keep = try Self.firstOffset(topic: topic, partition: Int(partition), atOrAfter: cutoff, db) ?? Int64.max
                deleted += try db.run(
                    "DELETE FROM events WHERE topic = ? AND partition = ? AND offset < ?", [.text(topic), .int(partition), .int(keep)])
            }
        }
    }

    public func highWatermarks(topic: String, partitions: Int) async throws -> [Int64] {
        // Read on the writer so that a just-confirmed append is always counted (the answer
        // comes after this transaction's commit, which stores what the cache holds).
        let state = writerState
        return try await write { db in
            try (0..<partitions).map { partition in
                let counter = StoreKey.counter(topic: topic, partition: partition)
                let next = try state.cachedNextOffset(counter) ?? SQLiteWriterState.storedNextOffset(counter, db) ?? 1
                return next - 1
            }
        }
    }
}

/// One append on the writer, as ``SQLiteWorker/makeJob(_:completion:)`` would make it, with its
/// result kept between the run and the finish: one object per publish instead of one for the
/// job and a closure context for the body and the completion. Its own class rather than a
/// generic job over its work: a generic class's methods, called through ``SQLiteJob``, ran
/// unspecialized (5 % more broker CPU per W1 event, BENCHMARKS.md).
///
/// - Important: touched only on the writer thread once submitted.
private final class AppendJob: SQLiteJob, @unchecked Sendable {
    private let store: SQLiteStore
    private let requests: [AppendRequest]
    private let ts: Int64
    private let completion: @Sendable (Result<[AppendResult], any Error>) -> Void
    private var result = SQLiteJobResult<[AppendResult]>()

    init(
        store: SQLiteStore, requests: [AppendRequest], ts: Int64,
        completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void
    ) {
        self.store = store
        self.requests = requests
        self.ts = ts
        self.completion = completion
    }

    /// May run again after its batch was rolled back (``SQLiteJob``).
    func run(_ db: SQLiteConnection) -> Bool {
        result.capture { try store.appendOnWriter(requests, ts: ts, db) }
    }

    func finish(_ error: (any Error)?) {
        completion(result.outcome(error))
    }
}
