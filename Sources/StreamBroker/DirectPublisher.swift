import Foundation
import Models
import Synchronization

/// Appends events to the log from a Swift service, with no broker in the path (SPEC §1,
/// "Direct"). Events get partitions, offsets and ids exactly as a `PUBLISH` would, and every
/// broker replica on the same store delivers them (its change streams wake the dispatchers).
///
/// ```swift
/// let store = try MongoStore(options: .init(uri: "mongodb://db:27017/?replicaSet=rs0"))
/// try await store.open()
/// let publisher = DirectPublisher(store: store)
/// let stored = try await publisher.publish(topic: "orders.created", key: "cust-7", json: #"{"n":1}"#)
/// print(stored.event.partition, stored.event.offset)
/// ```
public final class DirectPublisher: Sendable {
    private let store: any EventStore
    private let configs = Mutex<[String: TopicConfig]>([:])
    private let roundRobin = Atomic<Int>(0)

    /// - Parameter store: an opened store (``MongoStore`` to share the log with brokers).
    public init(store: any EventStore) {
        self.store = store
    }

    /// Appends one event once it is durable.
    /// - Parameters:
    ///   - json: the payload as JSON text (any JSON value); validated, stored as given.
    ///   - id: the event id; a repeated id on the same topic stores nothing and returns the
    ///     first event with `duplicate` set. Default: a new UUIDv7.
    /// - Throws: ``RequestError`` for a bad topic, key, header or payload; ``BrokerError``
    ///   with `unavailable` when the store cannot be written.
    public func publish(topic: String, key: String? = nil, headers: [(String, String)]? = nil, json: String, id: String? = nil) async throws
        -> AppendResult
    {
        try await publish(topic: topic, key: key, headers: headers, payload: try RawJSON.payload(json), id: id)
    }

    /// Appends one event whose payload is an `Encodable` value (encoded with `JSONEncoder`).
    public func publish(topic: String, key: String? = nil, headers: [(String, String)]? = nil, value: some Encodable, id: String? = nil)
        async throws -> AppendResult
    {
        let data = try JSONEncoder().encode(value)
        return try await publish(topic: topic, key: key, headers: headers, payload: RawJSON(trusted: Array(data)), id: id)
    }

    public func publish(topic: String, key: String?, headers: [(String, String)]?, payload: RawJSON, id: String?) async throws -> AppendResult {
        if let problem = Limits.nameProblem(topic, what: "topic") { throw RequestError.badRequest(problem) }
        try store.validatePayload(payload)
        if let key, key.utf8.count > Limits.maxKeyBytes { throw RequestError.badRequest("key is longer than \(Limits.maxKeyBytes) bytes") }
        if let id, id.isEmpty || id.utf8.count > Limits.maxIDBytes { throw RequestError.badRequest("id must be 1–\(Limits.maxIDBytes) bytes") }
        var checkedHeaders: Headers?
        if let headers {
            let value = JSONValue.object(headers.map { ($0.0, .string($0.1)) })
            checkedHeaders = try Headers.decode(value)
        }
        let config = try await config(for: topic)
        let partition =
            key.map { Partitioner.partition(forKey: $0, partitions: config.partitions) }
            ?? roundRobin.wrappingAdd(1, ordering: .relaxed).oldValue % config.partitions
        let request = AppendRequest(
            topic: topic, partition: partition, id: id ?? UUIDv7.make(), key: key, headers: checkedHeaders, payload: payload,
            idFromClient: id != nil)
        return try await store.append([request])[0]
    }

    private func config(for topic: String) async throws -> TopicConfig {
        if let known = configs.withLock({ $0[topic] }) { return known }
        let stored = try await store.topicConfigs()
        let config = stored.first { $0.topic == topic } ?? TopicConfig(topic: topic)
        if !stored.contains(where: { $0.topic == topic }) { try await store.putTopicConfig(config) }
        configs.withLock { $0[topic] = config }
        return config
    }
}
