import Foundation
import Logging
import Models
import Synchronization

/// The embedded store: one SQLite database file (WAL) under `BUS_DATA_DIR`, or in memory.
///
/// Writes go through one writer thread with group commit; reads through a reader thread with a
/// second connection (the same one for an in-memory database); a file database's WAL is
/// checkpointed on a third thread and connection (``SQLiteCheckpointer``), not by the writer.
/// Every SQLite call, opening included, runs on those threads; requests made before `open`
/// wait for it.
public final class SQLiteStore: EventStore {
    /// Where the database lives: a file in a directory, or memory (tests; gone with the process).
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
    let logger: Logger
    let feed = ChangeFeed()
    let metrics = StoreMetrics()
    let badConfigRows = BadConfigRows()
    /// - Important: touched only on the writer thread.
    let writerState = SQLiteWriterState()
    /// Requests made before `open` wait on these threads until the connection is open.
    let writer: SQLiteWorker
    /// The writer itself for an in-memory database.
    private let reader: SQLiteWorker
    /// Checkpoints the WAL of a file database (none in memory: no WAL).
    let checkpointer: SQLiteCheckpointer?
    /// The WAL's size at its restart limit, in bytes (4 KB pages).
    private let walLimitBytes: Int
    private let opened = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)
    let clock: @Sendable () -> Int64

    public convenience init(
        location: Location, durability: Durability = .normal, logger: Logger = Logger(label: "broker.store"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }
    ) {
        self.init(location: location, durability: durability, logger: logger, clock: clock, checkpoints: .standard)
    }

    /// - Parameters:
    ///   - checkpoints: when the WAL is checkpointed (``WALCheckpointPolicy``).
    init(
        location: Location, durability: Durability = .normal, logger: Logger = Logger(label: "broker.store"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
        checkpoints: WALCheckpointPolicy.Limits
    ) {
        self.location = location
        self.durability = durability
        self.logger = logger
        self.clock = clock
        walLimitBytes = checkpoints.restartPages * 4096
        if case .file = location {
            checkpointer = SQLiteCheckpointer(limits: checkpoints, logger: logger)
        } else {
            checkpointer = nil
        }
        let (state, feed, checkpointer, metrics) = (writerState, self.feed, self.checkpointer, self.metrics)
        writer = SQLiteWorker(
            name: "sqlite-writer", transactional: true,
            hooks: .init(
                beforeCommit: { db in try state.writeCounters(db) },
                // One wake-up per transaction for the watchers, before the publishers hear back;
                // the append latency once per transaction that stored events.
                afterCommit: { queuedAt in
                    let events = state.committed()
                    if !events.isEmpty { metrics.appended(queuedAt: queuedAt) }
                    feed.publish(events)
                },
                afterRollback: { state.rolledBack() },
                afterBatch: { db in checkpointer?.writerBatchEnded(db) }))
        if case .file = location {
            reader = SQLiteWorker(name: "sqlite-reader", transactional: false)
        } else {
            reader = writer
        }
    }

    /// Opens the database on the writer thread (creating the directory and the schema), then
    /// the reader's connection on its thread.
    public func open() async throws {
        let location = self.location
        let path: String
        switch location {
        case .memory:
            path = "file:streambroker-\(UUID().uuidString)?mode=memory&cache=private"
        case .file(let directory):
            path = (directory as NSString).appendingPathComponent("streambroker.sqlite3")
        }
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        do {
            try await openConnections(path: path, synchronous: synchronous)
        } catch {
            // Nothing can be served: fail what waits and what comes, as a closed store does.
            await close()
            throw error
        }
        opened.store(true, ordering: .relaxed)
        logger.info("store open", metadata: [LogKey.path: "\(path)"])
    }

    private func openConnections(path: String, synchronous: String) async throws {
        let (location, checkpointer, walLimitBytes) = (self.location, self.checkpointer, self.walLimitBytes)
        try await writer.open {
            if case .file(let directory) = location {
                do {
                    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                } catch {
                    throw BrokerError(.unavailable, "cannot create data directory \(directory): \(error.localizedDescription)")
                }
            }
            let connection = try SQLiteConnection(path: path)
            try connection.execute("PRAGMA journal_mode=WAL")
            try connection.execute("PRAGMA synchronous=\(synchronous)")
            try connection.execute(Self.writerPragmas(walLimitBytes: walLimitBytes))
            try Self.createSchema(connection)
            checkpointer?.attach(to: connection)
            return connection
        }
        try await checkpointer?.open(path: path, synchronous: synchronous)
        if reader !== writer {
            try await reader.open {
                let connection = try SQLiteConnection(path: path)
                try connection.execute("PRAGMA query_only=1")
                return connection
            }
        }
    }

    public func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        await writer.stop()
        await checkpointer?.stop()
        if reader !== writer { await reader.stop() }
        feed.finish()
    }

    public func isReady() async -> Bool {
        guard opened.load(ordering: .relaxed), !closed.load(ordering: .relaxed) else { return false }
        return (try? await read { connection in try connection.run("SELECT 1") }) != nil
    }

    /// The writer's cache holds the index pages it keeps coming back to (the tails, and the id
    /// index, which random ids spread) rather than re-reading them from the WAL or the file;
    /// a WAL that grew past its limit (readers held it) is cut back when it starts over.
    static func writerPragmas(walLimitBytes: Int) -> String {
        """
        PRAGMA cache_size=-16384;
        PRAGMA temp_store=MEMORY;
        PRAGMA journal_size_limit=\(walLimitBytes);
        """
    }

    static func createSchema(_ db: SQLiteConnection) throws {
        try db.execute(
            """
            CREATE TABLE IF NOT EXISTS events(
              topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
              id TEXT NOT NULL, ts INTEGER NOT NULL, key TEXT, headers BLOB, payload BLOB NOT NULL,
              PRIMARY KEY(topic, partition, offset)) WITHOUT ROWID;
            CREATE UNIQUE INDEX IF NOT EXISTS events_topic_id ON events(topic, id);
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
        try dropTimeIndex(db)
    }

    /// A store written before the writer kept each partition's times in order has an index on
    /// `(topic, partition, ts)`, and may hold events whose `ts` is below an earlier one's (two
    /// publishes that raced, a clock set back). Once, before the index goes: each such event's
    /// `ts` is raised to the newest before it in its partition, the order that time look-ups
    /// and retention search on (``SQLiteWriterState/position(_:_:)``). Each step can run again
    /// if the process dies between them.
    static func dropTimeIndex(_ db: SQLiteConnection) throws {
        var indexed = false
        try db.query("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_topic_partition_ts'") { _ in indexed = true }
        guard indexed else { return }
        try db.execute(
            """
            UPDATE events SET ts = ordered.ts FROM (
              SELECT topic, partition, offset, MAX(ts) OVER (PARTITION BY topic, partition ORDER BY offset) AS ts FROM events
            ) AS ordered
            WHERE events.topic = ordered.topic AND events.partition = ordered.partition AND events.offset = ordered.offset
              AND events.ts < ordered.ts;
            DROP INDEX events_topic_partition_ts;
            """)
    }

    /// Runs `body` on the writer thread, inside the next group commit.
    @discardableResult
    func write<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        try await writer.perform(body)
    }

    /// Runs `body` on the reader thread (which sees only committed writes).
    func read<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        try await reader.perform(body)
    }

    public func watchChanges(topic: String, _ handler: @escaping @Sendable (ChangeNotice) -> Void) -> ChangeWatch {
        feed.watch(topic: topic, handler)
    }
}
