import Models

/// The log: appends (on the writer, with group commit), reads, retention and high-water marks.
extension SQLiteStore {
    public func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void) {
        let now = clock()
        let feed = self.feed
        let job = writer.makeJob(
            { [self] connection in try appendOnWriter(requests, ts: now, connection) },
            completion: { result in
                if case .success(let results) = result {
                    feed.publish(results.filter { !$0.duplicate }.map(\.event))
                }
                completion(result)
            })
        writer.submit(job)
    }

    private func appendOnWriter(_ requests: [AppendRequest], ts: Int64, _ db: SQLiteConnection) throws -> [AppendResult] {
        var stored: [Event] = []
        for (topic, ids) in AppendPlan.idsToLookUp(requests) {
            for id in ids { try findByID(topic: topic, id: id, db).map { stored.append($0) } }
        }
        let plan = AppendPlan(requests, stored: stored)
        var first: [StoreKey: Int64] = [:]
        for (counter, count) in plan.reservations {
            var next: Int64 = 1
            if let cached = counters.value(counter) {
                next = cached
            } else {
                try db.query("SELECT next_offset FROM counters WHERE id = ?", [.text(counter.id)]) { next = $0.int(0) }
            }
            first[counter] = next
            try db.run(
                "INSERT INTO counters(id, next_offset) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET next_offset = excluded.next_offset",
                [.text(counter.id), .int(next + count)])
        }
        let events = plan.events(firstOffsets: first, ts: ts)
        for event in events {
            try db.run(
                "INSERT INTO events(topic, partition, offset, id, ts, key, headers, payload) VALUES (?,?,?,?,?,?,?,?)",
                [
                    .text(event.topic), .int(Int64(event.partition)), .int(event.offset), .text(event.id), .int(ts),
                    event.key.map(SQLValue.text) ?? .null, event.headers.map { .blob($0.jsonBytes) } ?? .null,
                    .blob(event.payload.bytes),
                ])
        }
        let results = try plan.results(inserted: events)
        // Only once this job cannot fail any more (its savepoint rolls back on a throw).
        for (counter, count) in plan.reservations { counters.set(counter, first[counter]! + count) }
        return results
    }

    private func findByID(topic: String, id: String, _ db: SQLiteConnection) throws -> Event? {
        var found: Event?
        try db.query(
            "SELECT topic, partition, offset, id, ts, key, headers, payload FROM events WHERE topic = ? AND id = ?",
            [.text(topic), .text(id)]
        ) { found = Self.event(from: $0) }
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
            var events: [Event] = []
            try db.query(
                """
                SELECT topic, partition, offset, id, ts, key, headers, payload FROM events
                WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?
                """,
                [.text(topic), .int(Int64(partition)), .int(from), .int(Int64(limit))]
            ) { events.append(Self.event(from: $0)) }
            return events
        }
    }

    public func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64) async throws -> Int64? {
        try await read { db in
            var offset: Int64?
            try db.query(
                "SELECT MIN(offset) FROM events WHERE topic = ? AND partition = ? AND ts >= ?",
                [.text(topic), .int(Int64(partition)), .int(timestamp)]
            ) { row in if !row.isNull(0) { offset = row.int(0) } }
            return offset
        }
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
            try db.run("DELETE FROM events WHERE topic = ? AND ts < ?", [.text(topic), .int(cutoff)])
        }
    }

    public func highWatermarks(topic: String, partitions: Int) async throws -> [Int64] {
        // Read on the writer so that a just-confirmed append is always counted.
        try await write { db in
            var marks = [Int64](repeating: 0, count: partitions)
            for partition in 0..<partitions {
                try db.query("SELECT next_offset FROM counters WHERE id = ?", [.text(StoreKey.counter(topic: topic, partition: partition).id)]) {
                    marks[partition] = $0.int(0) - 1
                }
            }
            return marks
        }
    }
}
