import CMongoc
import Foundation
import Logging
import Models
import ServiceLifecycle
import Synchronization

/// The production store: MongoDB through libmongoc, laid out as SPEC §3 says.
///
/// Commands are built as Extended JSON (``MongoCommand``) and converted with libbson (payloads
/// become BSON values, not strings) on the threads of a ``MongoClientPool``. Appends go through
/// one ``MongoAppender`` thread with group commit; change streams run on threads of their own
/// (``ChangeStreamTail``). The aspects live in `MongoStore+Log`, `+Groups`, `+TopicConfigs`,
/// `+ChangeStreams` and `+Coordination`.
public final class MongoStore: EventStore {
    /// How to reach MongoDB and how many clients and threads to use.
    public struct Options: Sendable {
        public var uri: String
        /// `MONGO_DB`; nil: the database in the URI's path, else `bus`.
        public var database: String?
        /// Pooled clients; must exceed the number of watched topics (each tail holds one).
        public var poolSize: Int
        /// Threads for request/response commands.
        public var threads: Int
        /// How long a change-stream `getMore` waits for new events.
        public var awaitMs: Int

        public init(uri: String, database: String? = nil, poolSize: Int = 128, threads: Int = 8, awaitMs: Int = 1000) {
            self.uri = uri
            self.database = database
            self.poolSize = poolSize
            self.threads = threads
            self.awaitMs = awaitMs
        }
    }

    let options: Options
    let logger: Logger
    let pool: MongoClientPool
    private let indexesReady = Atomic<Bool>(false)
    let closed = Atomic<Bool>(false)
    let appender: MongoAppender
    /// Running change-stream tails, until their threads have pushed their clients back.
    let tails = Mutex<[ObjectIdentifier: ChangeStreamTail]>([:])
    let clock: @Sendable () -> Int64
    let badConfigRows = BadConfigRows()
    /// The server clock's offset from ours, and when it was measured (local ms).
    let clockOffset = Mutex<(offset: Int64, measuredAt: Int64)?>(nil)
    /// Topics beyond the dedicated streams, fed by the shared stream.
    let sharedFeed = ChangeFeed()
    let sharedTailStarted = Atomic<Bool>(false)

    public init(
        options: Options, logger: Logger = Logger(label: "broker.store.mongo"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }
    ) throws {
        self.options = options
        self.logger = logger
        self.clock = clock
        pool = try MongoClientPool(uri: options.uri, database: options.database, maxSize: options.poolSize, threadCount: options.threads)
        appender = MongoAppender(pool: pool, logger: logger, clock: clock)
    }

    /// Creates the collections' indexes (idempotent), retrying until the server answers.
    public func open() async throws {
        var attempt = 0
        while true {
            do {
                try await run { client in try Self.createIndexes(client) }
                break
            } catch let error as BrokerError where error.mongoError?.isConnectivity == true {
                attempt += 1
                if attempt == 1 || attempt % 10 == 0 {
                    logger.warning("MongoDB not reachable yet; retrying", metadata: [LogKey.error: "\(error.message)"])
                }
                if Task.isShuttingDownGracefully || Task.isCancelled { throw BrokerError(.unavailable, "MongoDB not reachable: \(error.message)") }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
        indexesReady.store(true, ordering: .relaxed)
        appender.start()
        logger.info("MongoDB store open", metadata: [LogKey.database: "\(pool.database)"])
    }

    static func createIndexes(_ client: MongoClientPool.Client) throws {
        func create(_ collection: String, _ indexes: [(String, JSONValue, [(String, JSONValue)])]) throws {
            let specs: [JSONValue] = indexes.map { name, key, extra in .object([("key", key), ("name", .string(name))] + extra) }
            _ = try client.command(JSONValue.object([("createIndexes", .string(collection)), ("indexes", .array(specs))]).jsonBytes)
        }
        let one = JSONValue.number(1, integer: 1)
        let unique: [(String, JSONValue)] = [("unique", .bool(true))]
        try create(
            "events",
            [
                ("topic_partition_offset", .object([("topic", one), ("partition", one), ("offset", one)]), unique),
                ("topic_partition_ts", .object([("topic", one), ("partition", one), ("ts", one)]), []),
                ("topic_id", .object([("topic", one), ("id", one)]), unique),
            ])
        try create("group_offsets", [("topic_partition_group", .object([("topic", one), ("partition", one), ("group", one)]), unique)])
        try create("topic_configs", [("topic", .object([("topic", one)]), unique)])
        try create("members", [("heartbeatAt_ttl", .object([("heartbeatAt", one)]), [("expireAfterSeconds", .number(60, integer: 60))])])
        try create(
            "attempts", [("topic_partition_group_offset", .object([("topic", one), ("partition", one), ("group", one), ("offset", one)]), [])])
    }

    public func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        indexesReady.store(false, ordering: .relaxed)
        let all = tails.withLock { tails -> [ChangeStreamTail] in
            defer { tails = [:] }
            return Array(tails.values)
        }
        for tail in all { tail.stop() }
        await appender.stop()
        for tail in all { await tail.join() }
        await pool.shutdown()
    }

    public func isReady() async -> Bool {
        guard indexesReady.load(ordering: .relaxed), !closed.load(ordering: .relaxed) else { return false }
        do {
            _ = try await run { client in try client.command(Array(#"{"ping":1}"#.utf8)) }
            return true
        } catch {
            return false
        }
    }

    /// Runs `body` with a pooled client on the pool's threads.
    /// - Throws: `unavailable` when the store is closed; a MongoDB error as a ``BrokerError``
    ///   (``BrokerError/mongoError`` tells which).
    func run<R: Sendable>(_ body: @escaping @Sendable (MongoClientPool.Client) throws -> R) async throws -> R {
        guard !closed.load(ordering: .relaxed) else { throw BrokerError(.unavailable, "the store is closed") }
        return try await pool.run(body)
    }
}
