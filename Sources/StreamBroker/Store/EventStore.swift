import Models

/// One event to append; the store assigns its offset.
public struct AppendRequest: Sendable {
    public var topic: String
    public var partition: Int
    public var id: String
    public var key: String?
    public var headers: Headers?
    public var payload: RawJSON
    /// True when the publisher chose `id`, so a duplicate must be looked for.
    public var idFromClient: Bool

    public init(topic: String, partition: Int, id: String, key: String?, headers: Headers?, payload: RawJSON, idFromClient: Bool) {
        self.topic = topic
        self.partition = partition
        self.id = id
        self.key = key
        self.headers = headers
        self.payload = payload
        self.idFromClient = idFromClient
    }
}

/// What an append produced: the stored event, or the earlier one with the same `(topic, id)`.
public struct AppendResult: Sendable {
    public var event: Event
    public var duplicate: Bool
}

/// A group's committed position in one partition.
public struct GroupPosition: Sendable, Equatable {
    public var group: String
    public var partition: Int
    public var lastCommitted: Int64
    public var epoch: Int64
}

/// The system of record: the log, group positions, attempts and topic configs (SPEC §3).
///
/// Implemented by ``SQLiteStore`` (embedded) and ``MongoStore``. Every method may block on I/O
/// internally but never on the caller's thread: the stores run their C calls on threads of
/// their own. What the stores share lives beside this file: ``GroupCommitThread`` (batched
/// writes), ``AppendPlan`` (duplicates and offsets of an append), ``StoreKey`` (the ids) and
/// ``ChangeFeed`` (in-process fan-out of new events).
public protocol EventStore: Sendable {
    /// Creates tables/collections and indexes (idempotent). Appends made before it wait for it.
    func open() async throws
    /// Flushes and closes; later calls fail with `unavailable`.
    func close() async
    /// Whether the store is reachable and its schema is in place.
    func isReady() async -> Bool

    /// Appends events in order, durably, and calls `completion` once they are committed.
    ///
    /// Requests submitted earlier are stored before later ones (submission order is offset order
    /// within a partition). The completion runs on the store's thread: keep it short.
    func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void)

    /// Events of one partition with `offset >= from`, in offset order, at most `limit`.
    func read(topic: String, partition: Int, from: Int64, limit: Int) async throws -> [Event]
    /// The first offset whose event has `ts >= timestamp`, or nil when there is none.
    func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64) async throws -> Int64?
    /// The lowest stored offset of a partition, or nil when it holds no event.
    func lowestOffset(topic: String, partition: Int) async throws -> Int64?
    /// Checks, before anything is reserved, that the store can hold this payload.
    func validatePayload(_ payload: RawJSON) throws(RequestError)
    /// Deletes a topic's events older than `cutoff` (epoch ms), for retention; returns how many.
    func deleteEvents(topic: String, olderThan cutoff: Int64) async throws -> Int
    /// The last assigned offset of each partition (0 when none).
    func highWatermarks(topic: String, partitions: Int) async throws -> [Int64]

    /// All committed positions of a group on a topic.
    func positions(topic: String, group: String) async throws -> [GroupPosition]
    /// All groups' committed positions on a topic.
    func allPositions(topic: String) async throws -> [GroupPosition]
    /// Sets a group's watermark; refused with `fenced` when `epoch` is not the stored one.
    func commit(topic: String, partition: Int, group: String, lastCommitted: Int64, epoch: Int64) async throws

    /// Persisted delivery attempts of one partition for a group, for offsets above `above`.
    func attempts(topic: String, partition: Int, group: String, above: Int64) async throws -> [Int64: Int]
    /// Records how many deliveries of an event have ended, and why the last one failed.
    func setAttempts(topic: String, partition: Int, group: String, offset: Int64, attempts: Int, reason: String?) async throws
    /// Drops attempt records at or below a group's watermark.
    func clearAttempts(topic: String, partition: Int, group: String, upTo: Int64) async throws

    func topicConfigs() async throws -> [TopicConfig]
    func putTopicConfig(_ config: TopicConfig) async throws
    /// Stores `config` unless the topic has one already; returns the stored config.
    func ensureTopicConfig(_ config: TopicConfig) async throws -> TopicConfig

    /// Tells `handler` of newly stored events of one topic (the doorbell of SPEC §4). It may
    /// miss events or deliver them late; dispatchers always read by offset to be sure.
    /// `.reopened` means the feed (re)opened and may have missed events: rescan by offset; it
    /// is always the first notice, once the feed is open.
    ///
    /// - Important: `handler` runs on the store's own thread, right after a commit or a
    ///   change-stream batch: it must hand the notice on without blocking.
    func watchChanges(topic: String, _ handler: @escaping @Sendable (ChangeNotice) -> Void) -> ChangeWatch
}

extension EventStore {
    /// Checks that the store can hold a payload; by default every JSON value can.
    public func validatePayload(_ payload: RawJSON) throws(RequestError) {}

    /// Appends and waits for the commit.
    public func append(_ requests: [AppendRequest]) async throws -> [AppendResult] {
        try await withCheckedThrowingContinuation { continuation in
            append(requests) { continuation.resume(with: $0) }
        }
    }
}
