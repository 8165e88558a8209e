import CMongoc
import Foundation
import Logging
import Models
import ServiceLifecycle
import Synchronization

/// The production store: MongoDB through libmongoc, laid out as SPEC §3 says.
///
/// Commands are built as Extended JSON and converted with libbson (payloads become BSON values,
/// not strings). Appends go through one appender thread that batches everything queued while
/// the previous batch ran: one `$inc` per (topic, partition) reserves the offsets, one `insert`
/// stores the batch. Change streams run one per watched topic, each on a thread of its own
/// holding one pooled client while it waits in `getMore`.
public final class MongoStore: EventStore {
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
    private let closed = Atomic<Bool>(false)
    private let appender: MongoAppender
    private let tails = Mutex<[ObjectIdentifier: ChangeStreamTail]>([:])
    private let clock: @Sendable () -> Int64
    /// The server clock's offset from ours, and when it was measured (local ms).
    let clockOffset = Mutex<(offset: Int64, measuredAt: Int64)?>(nil)
    /// Topics beyond the dedicated streams, fed by the shared stream.
    private let sharedFeed = ChangeFeed()
    private let sharedTailStarted = Atomic<Bool>(false)

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

    // MARK: Lifecycle

    /// Creates the collections' indexes (idempotent), retrying until the server answers.
    public func open() async throws {
        var attempt = 0
        while true {
            do {
                try await pool.run { client in try Self.createIndexes(client) }
                break
            } catch let error as MongoClientPool.CommandError where error.isConnectivity {
                attempt += 1
                if attempt == 1 || attempt % 10 == 0 {
                    logger.warning("MongoDB not reachable yet; retrying", metadata: ["error": "\(error)"])
                }
                if Task.isShuttingDownGracefully || Task.isCancelled { throw BrokerError(.unavailable, "MongoDB not reachable: \(error)") }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
        indexesReady.store(true, ordering: .relaxed)
        appender.start()
        logger.info("MongoDB store open", metadata: ["database": "\(pool.database)"])
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
            _ = try await pool.run { client in try client.command(Array(#"{"ping":1}"#.utf8)) }
            return true
        } catch {
            return false
        }
    }

    func run<R: Sendable>(_ body: @escaping @Sendable (MongoClientPool.Client) throws -> R) async throws -> R {
        guard !closed.load(ordering: .relaxed) else { throw BrokerError(.unavailable, "the store is closed") }
        do {
            return try await pool.run(body)
        } catch let error as MongoClientPool.CommandError {
            throw BrokerError(.unavailable, "MongoDB: \(error.message)", underlying: error)
        }
    }

    // MARK: Log

    public func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void) {
        guard !closed.load(ordering: .relaxed) else { return completion(.failure(BrokerError(.unavailable, "the store is closed"))) }
        appender.submit(requests, completion: completion)
    }

    static func event(from document: JSONValue) -> Event? {
        guard let topic = MongoJSON.string(document["topic"]), let partition = MongoJSON.integer(document["partition"]),
            let offset = MongoJSON.integer(document["offset"]), let id = MongoJSON.string(document["id"])
        else { return nil }
        var headers: Headers?
        if let value = document["headers"] { headers = try? Headers.decode(value) }
        return Event(
            topic: topic, partition: Int(partition), offset: offset, id: id, ts: MongoJSON.integer(document["ts"]) ?? 0,
            key: MongoJSON.string(document["key"]), headers: headers,
            payload: RawJSON(trusted: (document["payload"] ?? .null).jsonBytes))
    }

    static func firstBatch(_ reply: JSONValue) -> [JSONValue] {
        MongoJSON.array(reply["cursor"]?["firstBatch"])
    }

    static func find(
        _ collection: String, filter: JSONValue, sort: JSONValue? = nil, limit: Int? = nil, projection: JSONValue? = nil
    ) -> [UInt8] {
        var members: [(String, JSONValue)] = [("find", .string(collection)), ("filter", filter)]
        if let sort { members.append(("sort", sort)) }
        if let projection { members.append(("projection", projection)) }
        if let limit {
            members.append(("limit", MongoJSON.int(limit)))
            members.append(("batchSize", MongoJSON.int(limit)))
            members.append(("singleBatch", .bool(true)))
        } else {
            members.append(("batchSize", MongoJSON.int(100_000)))
            members.append(("singleBatch", .bool(true)))
        }
        return JSONValue.object(members).jsonBytes
    }

    /// An `update` command with one statement, majority write concern.
    static func update(_ collection: String, query: JSONValue, update: JSONValue, upsert: Bool = false) -> [UInt8] {
        JSONValue.object([
            ("update", .string(collection)),
            ("updates", .array([.object([("q", query), ("u", update), ("upsert", .bool(upsert))])])),
            ("writeConcern", .object([("w", .string("majority"))])),
        ]).jsonBytes
    }

    /// A `delete` command with one statement (`limit` 0: every match).
    static func delete(_ collection: String, query: JSONValue, limit: Int = 0) -> [UInt8] {
        JSONValue.object([
            ("delete", .string(collection)),
            ("deletes", .array([.object([("q", query), ("limit", MongoJSON.int(limit))])])),
        ]).jsonBytes
    }

    public func read(topic: String, partition: Int, from: Int64, limit: Int) async throws -> [Event] {
        try await run { client in
            let reply = try client.command(
                Self.find(
                    "events",
                    filter: .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)),
                        ("offset", .object([("$gte", MongoJSON.long(from))])),
                    ]),
                    sort: .object([("offset", MongoJSON.int(1))]), limit: limit))
            return Self.firstBatch(reply).compactMap(Self.event(from:))
        }
    }

    private func firstOffset(topic: String, partition: Int, extra: [(String, JSONValue)]) async throws -> Int64? {
        try await run { client in
            let reply = try client.command(
                Self.find(
                    "events", filter: .object([("topic", .string(topic)), ("partition", MongoJSON.int(partition))] + extra),
                    sort: .object([("offset", MongoJSON.int(1))]), limit: 1, projection: .object([("offset", MongoJSON.int(1))])))
            return Self.firstBatch(reply).first.flatMap { MongoJSON.integer($0["offset"]) }
        }
    }

    public func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64) async throws -> Int64? {
        try await firstOffset(topic: topic, partition: partition, extra: [("ts", .object([("$gte", MongoJSON.long(timestamp))]))])
    }

    public func lowestOffset(topic: String, partition: Int) async throws -> Int64? {
        try await firstOffset(topic: topic, partition: partition, extra: [])
    }

    /// libbson reads payloads as Extended JSON: an object like `{"$date": "x"}` cannot become
    /// BSON. Refusing it here keeps it from failing a whole batch after offsets were reserved.
    public func validatePayload(_ payload: RawJSON) throws(RequestError) {
        var wrapped = Array(#"{"v":"#.utf8)
        wrapped.append(contentsOf: payload.bytes)
        wrapped.append(UInt8(ascii: "}"))
        var error = bson_error_t()
        guard let document = wrapped.withUnsafeBufferPointer({ bson_new_from_json($0.baseAddress, $0.count, &error) }) else {
            throw .badRequest("payload cannot be stored in MongoDB: \(MongoClientPool.message(error))")
        }
        bson_destroy(document)
    }

    public func deleteEvents(topic: String, olderThan cutoff: Int64) async throws -> Int {
        let command = Self.delete("events", query: .object([("topic", .string(topic)), ("ts", .object([("$lt", MongoJSON.long(cutoff))]))]))
        let reply = try await run { client in try client.command(command) }
        return Int(MongoJSON.integer(reply["n"]) ?? 0)
    }

    public func highWatermarks(topic: String, partitions: Int) async throws -> [Int64] {
        try await run { client in
            let ids: [JSONValue] = (0..<partitions).map { .string("\(topic):\($0)") }
            let reply = try client.command(Self.find("counters", filter: .object([("_id", .object([("$in", .array(ids))]))])))
            var marks = [Int64](repeating: 0, count: partitions)
            for document in Self.firstBatch(reply) {
                guard let id = MongoJSON.string(document["_id"]), let next = MongoJSON.integer(document["nextOffset"]),
                    let partition = id.split(separator: ":").last.flatMap({ Int($0) }), partition < partitions
                else { continue }
                marks[partition] = next - 1
            }
            return marks
        }
    }

    // MARK: Groups

    static func position(_ document: JSONValue) -> GroupPosition? {
        guard let group = MongoJSON.string(document["group"]), let partition = MongoJSON.integer(document["partition"]),
            let committed = MongoJSON.integer(document["lastCommitted"])
        else { return nil }
        return GroupPosition(group: group, partition: Int(partition), lastCommitted: committed, epoch: MongoJSON.integer(document["epoch"]) ?? 0)
    }

    public func positions(topic: String, group: String) async throws -> [GroupPosition] {
        try await run { client in
            let reply = try client.command(
                Self.find("group_offsets", filter: .object([("topic", .string(topic)), ("group", .string(group))]), sort: .object([("partition", MongoJSON.int(1))])))
            return Self.firstBatch(reply).compactMap(Self.position)
        }
    }

    public func allPositions(topic: String) async throws -> [GroupPosition] {
        try await run { client in
            let reply = try client.command(
                Self.find("group_offsets", filter: .object([("topic", .string(topic))]), sort: .object([("group", MongoJSON.int(1)), ("partition", MongoJSON.int(1))])))
            return Self.firstBatch(reply).compactMap(Self.position)
        }
    }

    public func commit(topic: String, partition: Int, group: String, lastCommitted: Int64, epoch: Int64) async throws {
        let now = clock()
        let id = "\(topic):\(partition):\(group)"
        let command = Self.update(
            "group_offsets", query: .object([("_id", .string(id)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([
                ("$set", .object([("lastCommitted", MongoJSON.long(lastCommitted)), ("updatedTs", MongoJSON.long(now))])),
                (
                    "$setOnInsert",
                    .object([("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)), ("epoch", MongoJSON.long(epoch))])
                ),
            ]), upsert: true)
        do {
            _ = try await pool.run { client in try client.command(command) }
        } catch let error as MongoClientPool.CommandError where error.isDuplicateKey {
            throw BrokerError(.fenced, "commit for \(id) refused: epoch \(epoch) is no longer current")
        } catch let error as MongoClientPool.CommandError {
            throw BrokerError(.unavailable, "MongoDB: \(error.message)", underlying: error)
        }
    }

    // MARK: Attempts

    public func attempts(topic: String, partition: Int, group: String, above: Int64) async throws -> [Int64: Int] {
        try await run { client in
            let reply = try client.command(
                Self.find(
                    "attempts",
                    filter: .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                        ("offset", .object([("$gt", MongoJSON.long(above))])),
                    ])))
            var attempts: [Int64: Int] = [:]
            for document in Self.firstBatch(reply) {
                if let offset = MongoJSON.integer(document["offset"]), let count = MongoJSON.integer(document["attempts"]) {
                    attempts[offset] = Int(count)
                }
            }
            return attempts
        }
    }

    public func setAttempts(topic: String, partition: Int, group: String, offset: Int64, attempts: Int, reason: String?) async throws {
        let command = Self.update(
            "attempts", query: .object([("_id", .string("\(topic):\(partition):\(group):\(offset)"))]),
            update: .object([
                (
                    "$set",
                    .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                        ("offset", MongoJSON.long(offset)), ("attempts", MongoJSON.int(attempts)), ("lastReason", reason.map(JSONValue.string) ?? .null),
                    ])
                )
            ]), upsert: true)
        _ = try await run { client in try client.command(command) }
    }

    public func clearAttempts(topic: String, partition: Int, group: String, upTo: Int64) async throws {
        let command = Self.delete(
            "attempts",
            query: .object([
                ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                ("offset", .object([("$lte", MongoJSON.long(upTo))])),
            ]))
        _ = try await run { client in try client.command(command) }
    }

    // MARK: Topic configs

    public func topicConfigs() async throws -> [TopicConfig] {
        try await run { client in
            let reply = try client.command(Self.find("topic_configs", filter: .object([]), sort: .object([("topic", MongoJSON.int(1))])))
            return Self.firstBatch(reply).compactMap { document in
                guard case .object(let members) = document else { return nil }
                return try? TopicConfig.decode(.object(members.filter { $0.0 != "_id" }))
            }
        }
    }

    public func putTopicConfig(_ config: TopicConfig) async throws {
        let command = Self.update("topic_configs", query: .object([("topic", .string(config.topic))]), update: config.jsonValue, upsert: true)
        _ = try await run { client in try client.command(command) }
    }

    public func ensureTopicConfig(_ config: TopicConfig) async throws -> TopicConfig {
        let insert = Self.update(
            "topic_configs", query: .object([("topic", .string(config.topic))]), update: .object([("$setOnInsert", config.jsonValue)]),
            upsert: true)
        let find = Self.find("topic_configs", filter: .object([("topic", .string(config.topic))]), limit: 1)
        do {
            return try await run { client in
                do {
                    _ = try client.command(insert)
                } catch let error as MongoClientPool.CommandError where error.isDuplicateKey {
                    // Another replica inserted it at the same moment; read theirs.
                }
                guard case .object(let members)? = Self.firstBatch(try client.command(find)).first else { return config }
                return (try? TopicConfig.decode(.object(members.filter { $0.0 != "_id" }))) ?? config
            }
        }
    }

    // MARK: Change streams

    /// Per-topic streams are kept to half the pool (less the command threads); further topics
    /// are fed by one shared stream of every insert (SPEC §4), so that watched topics can never
    /// take every pooled client.
    var dedicatedTailLimit: Int { max(0, (options.poolSize - options.threads) / 2) }

    public func changes(topic: String) -> AsyncStream<[Event]> {
        let dedicated = tails.withLock { $0.values.filter { $0.topic != nil }.count } < dedicatedTailLimit
        guard dedicated else { return sharedChanges(topic: topic) }
        let (stream, continuation) = AsyncStream<[Event]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let tail = ChangeStreamTail(
            topic: topic, pool: pool, awaitMs: options.awaitMs, logger: logger, deliver: { continuation.yield($0) },
            finish: { continuation.finish() })
        start(tail)
        // A tail stays registered until its thread has pushed its client back, so that `close`
        // never destroys the pool under it.
        continuation.onTermination = { _ in tail.stop() }
        return stream
    }

    private func sharedChanges(topic: String) -> AsyncStream<[Event]> {
        let startShared = sharedTailStarted.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        let stream = sharedFeed.stream(topic: topic)
        if startShared {
            logger.info("watching further topics through one shared change stream", metadata: ["dedicated": "\(dedicatedTailLimit)"])
            let feed = sharedFeed
            start(
                ChangeStreamTail(
                    topic: nil, pool: pool, awaitMs: options.awaitMs, logger: logger,
                    deliver: { events in if events.isEmpty { feed.rescanAll() } else { feed.publish(events) } },
                    finish: { feed.finish() }))
        }
        return stream
    }

    private func start(_ tail: ChangeStreamTail) {
        let key = ObjectIdentifier(tail)
        tails.withLock { $0[key] = tail }
        tail.start { [weak self] in self?.tails.withLock { $0[key] = nil } }
    }
}
