import Foundation
import Logging
import Models
import Synchronization

/// The embedded store: one SQLite database file (WAL) under `BUS_DATA_DIR`, or in memory.
///
/// Writes go through one writer thread with group commit; reads through a reader thread with a
/// second connection (the same one for an in-memory database).
public final class SQLiteStore: EventStore {
    public enum Location: Sendable {
        case file(directory: String)
        case memory
    }

    /// How hard a commit is pushed to disk.
    public enum Durability: String, Sendable {
        /// WAL with `synchronous=NORMAL`: survives a killed process, not a power cut.
        case normal
        /// WAL with `synchronous=FULL`: fsync on every group commit.
        case full
    }

    private let location: Location
    private let durability: Durability
    private let logger: Logger
    private let feed = ChangeFeed()
    private let workers = Mutex<(writer: SQLiteWorker, reader: SQLiteWorker)?>(nil)
    private let clock: @Sendable () -> Int64

    public init(
        location: Location, durability: Durability = .normal, logger: Logger = Logger(label: "broker.store"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }
    ) {
        self.location = location
        self.durability = durability
        self.logger = logger
        self.clock = clock
    }

    public func open() async throws {
        let path: String
        switch location {
        case .memory:
            path = "file:streambroker-\(UUID().uuidString)?mode=memory&cache=private"
        case .file(let directory):
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw BrokerError(.unavailable, "cannot create data directory \(directory): \(error.localizedDescription)")
            }
            path = (directory as NSString).appendingPathComponent("streambroker.sqlite3")
        }
        let writerConnection = try SQLiteConnection(path: path)
        try writerConnection.execute("PRAGMA journal_mode=WAL")
        try writerConnection.execute("PRAGMA synchronous=\(durability == .full ? "FULL" : "NORMAL")")
        try Self.createSchema(writerConnection)
        let writer = SQLiteWorker(name: "sqlite-writer", connection: writerConnection, transactional: true)
        writer.onRollback = { [counters] in counters.reset() }
        let reader: SQLiteWorker
        if case .file = location {
            let readerConnection = try SQLiteConnection(path: path)
            try readerConnection.execute("PRAGMA query_only=1")
            reader = SQLiteWorker(name: "sqlite-reader", connection: readerConnection, transactional: false)
            reader.start()
        } else {
            reader = writer
        }
        writer.start()
        workers.withLock { $0 = (writer, reader) }
        logger.info("store open", metadata: ["path": "\(path)"])
    }

    /// - Important: touched only on the writer thread.
    private let counters = OffsetCounters()

    public func close() async {
        guard let (writer, reader) = workers.withLock({ state -> (SQLiteWorker, SQLiteWorker)? in
            defer { state = nil }
            return state
        }) else { return }
        await writer.stop()
        if reader !== writer { await reader.stop() }
        feed.finish()
    }

    public func isReady() async -> Bool {
        (try? await read { connection in try connection.run("SELECT 1") }) != nil
    }

    static func createSchema(_ db: SQLiteConnection) throws {
        try db.execute(
            """
            CREATE TABLE IF NOT EXISTS events(
              topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
              id TEXT NOT NULL, ts INTEGER NOT NULL, key TEXT, headers BLOB, payload BLOB NOT NULL,
              PRIMARY KEY(topic, partition, offset)) WITHOUT ROWID;
            CREATE UNIQUE INDEX IF NOT EXISTS events_topic_id ON events(topic, id);
            CREATE INDEX IF NOT EXISTS events_topic_partition_ts ON events(topic, partition, ts);
            CREATE TABLE IF NOT EXISTS counters(id TEXT PRIMARY KEY, next_offset INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS group_offsets(
              topic TEXT NOT NULL, partition INTEGER NOT NULL, grp TEXT NOT NULL,
              last_committed INTEGER NOT NULL, epoch INTEGER NOT NULL, updated_ts INTEGER NOT NULL,
              PRIMARY KEY(topic, partition, grp)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS attempts(
              topic TEXT NOT NULL, partition INTEGER NOT NULL, grp TEXT NOT NULL, offset INTEGER NOT NULL,
              attempts INTEGER NOT NULL, last_reason TEXT,
              PRIMARY KEY(topic, partition, grp, offset)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS topic_configs(topic TEXT PRIMARY KEY, config BLOB NOT NULL) WITHOUT ROWID;
            """)
    }

    private func writer() throws -> SQLiteWorker {
        guard let worker = workers.withLock({ $0?.writer }) else { throw BrokerError(.unavailable, "the store is closed") }
        return worker
    }

    @discardableResult
    private func write<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        try await writer().perform(body)
    }

    private func read<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        guard let worker = workers.withLock({ $0?.reader }) else { throw BrokerError(.unavailable, "the store is closed") }
        return try await worker.perform(body)
    }

    // MARK: Log

    public func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void) {
        let worker: SQLiteWorker
        do { worker = try writer() } catch { return completion(.failure(error)) }
        let now = clock()
        let feed = self.feed
        let job = worker.makeJob({ [self] connection in try appendOnWriter(requests, ts: now, connection) }) { result in
            if case .success(let results) = result {
                feed.publish(results.filter { !$0.duplicate }.map(\.event))
            }
            completion(result)
        }
        worker.submit(job)
    }

    private func appendOnWriter(_ requests: [AppendRequest], ts: Int64, _ db: SQLiteConnection) throws -> [AppendResult] {
        var results: [AppendResult] = []
        results.reserveCapacity(requests.count)
        var advanced: [String: Int64] = [:]
        for request in requests {
            if request.idFromClient, let existing = try findByID(topic: request.topic, id: request.id, db) {
                results.append(AppendResult(event: existing, duplicate: true))
                continue
            }
            let counterID = "\(request.topic):\(request.partition)"
            var next: Int64
            if let pending = advanced[counterID] {
                next = pending
            } else if let cached = counters.value(counterID) {
                next = cached
            } else {
                next = 1
                try db.query("SELECT next_offset FROM counters WHERE id = ?", [.text(counterID)]) { next = $0.int(0) }
            }
            let event = Event(
                topic: request.topic, partition: request.partition, offset: next, id: request.id, ts: ts,
                key: request.key, headers: request.headers, payload: request.payload)
            try db.run(
                "INSERT INTO events(topic, partition, offset, id, ts, key, headers, payload) VALUES (?,?,?,?,?,?,?,?)",
                [
                    .text(event.topic), .int(Int64(event.partition)), .int(event.offset), .text(event.id), .int(ts),
                    event.key.map(SQLValue.text) ?? .null, event.headers.map { .blob($0.jsonBytes) } ?? .null,
                    .blob(event.payload.bytes),
                ])
            advanced[counterID] = next + 1
            results.append(AppendResult(event: event, duplicate: false))
        }
        for (id, next) in advanced {
            try db.run(
                "INSERT INTO counters(id, next_offset) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET next_offset = excluded.next_offset",
                [.text(id), .int(next)])
        }
        for (id, next) in advanced { counters.set(id, next) }
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
                try db.query("SELECT next_offset FROM counters WHERE id = ?", [.text("\(topic):\(partition)")]) {
                    marks[partition] = $0.int(0) - 1
                }
            }
            return marks
        }
    }

    // MARK: Groups

    public func positions(topic: String, group: String) async throws -> [GroupPosition] {
        try await write { db in
            var positions: [GroupPosition] = []
            try db.query(
                "SELECT partition, last_committed, epoch FROM group_offsets WHERE topic = ? AND grp = ? ORDER BY partition",
                [.text(topic), .text(group)]
            ) { positions.append(GroupPosition(group: group, partition: Int($0.int(0)), lastCommitted: $0.int(1), epoch: $0.int(2))) }
            return positions
        }
    }

    public func allPositions(topic: String) async throws -> [GroupPosition] {
        try await write { db in
            var positions: [GroupPosition] = []
            try db.query(
                "SELECT grp, partition, last_committed, epoch FROM group_offsets WHERE topic = ? ORDER BY grp, partition",
                [.text(topic)]
            ) {
                positions.append(GroupPosition(group: $0.text(0) ?? "", partition: Int($0.int(1)), lastCommitted: $0.int(2), epoch: $0.int(3)))
            }
            return positions
        }
    }

    public func commit(topic: String, partition: Int, group: String, lastCommitted: Int64, epoch: Int64) async throws {
        let now = clock()
        try await write { db in
            var stored: Int64?
            try db.query(
                "SELECT epoch FROM group_offsets WHERE topic = ? AND partition = ? AND grp = ?",
                [.text(topic), .int(Int64(partition)), .text(group)]
            ) { stored = $0.int(0) }
            if let stored, stored != epoch {
                throw BrokerError(.fenced, "commit for \(topic):\(partition):\(group) refused: epoch \(epoch) is not the current \(stored)")
            }
            try db.run(
                """
                INSERT INTO group_offsets(topic, partition, grp, last_committed, epoch, updated_ts) VALUES (?,?,?,?,?,?)
                ON CONFLICT(topic, partition, grp) DO UPDATE SET last_committed = excluded.last_committed, updated_ts = excluded.updated_ts
                """,
                [.text(topic), .int(Int64(partition)), .text(group), .int(lastCommitted), .int(epoch), .int(now)])
        }
    }

    // MARK: Attempts

    public func attempts(topic: String, partition: Int, group: String, above: Int64) async throws -> [Int64: Int] {
        try await write { db in
            var attempts: [Int64: Int] = [:]
            try db.query(
                "SELECT offset, attempts FROM attempts WHERE topic = ? AND partition = ? AND grp = ? AND offset > ?",
                [.text(topic), .int(Int64(partition)), .text(group), .int(above)]
            ) { attempts[$0.int(0)] = Int($0.int(1)) }
            return attempts
        }
    }

    public func setAttempts(topic: String, partition: Int, group: String, offset: Int64, attempts: Int, reason: String?) async throws {
        try await write { db in
            try db.run(
                """
                INSERT INTO attempts(topic, partition, grp, offset, attempts, last_reason) VALUES (?,?,?,?,?,?)
                ON CONFLICT(topic, partition, grp, offset) DO UPDATE SET attempts = excluded.attempts, last_reason = excluded.last_reason
                """,
                [.text(topic), .int(Int64(partition)), .text(group), .int(offset), .int(Int64(attempts)), reason.map(SQLValue.text) ?? .null])
        }
    }

    public func clearAttempts(topic: String, partition: Int, group: String, upTo: Int64) async throws {
        try await write { db in
            try db.run(
                "DELETE FROM attempts WHERE topic = ? AND partition = ? AND grp = ? AND offset <= ?",
                [.text(topic), .int(Int64(partition)), .text(group), .int(upTo)])
        }
    }

    // MARK: Topic configs

    public func topicConfigs() async throws -> [TopicConfig] {
        try await write { db in
            var configs: [TopicConfig] = []
            try db.query("SELECT config FROM topic_configs ORDER BY topic") { row in
                if let bytes = row.bytes(0), let value = try? RawJSON(trusted: bytes).parsed(), let config = try? TopicConfig.decode(value) {
                    configs.append(config)
                }
            }
            return configs
        }
    }

    public func putTopicConfig(_ config: TopicConfig) async throws {
        try await write { db in
            try db.run(
                "INSERT INTO topic_configs(topic, config) VALUES (?, ?) ON CONFLICT(topic) DO UPDATE SET config = excluded.config",
                [.text(config.topic), .blob(config.jsonValue.jsonBytes)])
        }
    }

    public func ensureTopicConfig(_ config: TopicConfig) async throws -> TopicConfig {
        try await write { db in
            try db.run("INSERT OR IGNORE INTO topic_configs(topic, config) VALUES (?, ?)", [.text(config.topic), .blob(config.jsonValue.jsonBytes)])
            var stored = config
            try db.query("SELECT config FROM topic_configs WHERE topic = ?", [.text(config.topic)]) { row in
                if let bytes = row.bytes(0), let value = try? RawJSON(trusted: bytes).parsed(), let decoded = try? TopicConfig.decode(value) {
                    stored = decoded
                }
            }
            return stored
        }
    }

    public func changes(topic: String) -> AsyncStream<[Event]> {
        feed.stream(topic: topic)
    }
}

/// The writer's cache of `counters.next_offset`.
///
/// - Important: used only on the writer thread (reset from its rollback hook).
final class OffsetCounters: @unchecked Sendable {
    private var values: [String: Int64] = [:]
    func value(_ id: String) -> Int64? { values[id] }
    func set(_ id: String, _ next: Int64) { values[id] = next }
    func reset() { values.removeAll() }
}
