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
    private let configs: TopicConfigCache
    private let preparer: EventPreparer
    private let refreshInterval: Duration
    private let lastRefresh = Mutex<ContinuousClock.Instant?>(nil)

    /// - Parameters:
    ///   - store: an opened store (``MongoStore`` to share the log with brokers).
    ///   - refreshInterval: how old the known topic configs may get before they are read again,
    ///     so that partitions added through a broker are used here too (as a broker's
    ///     `BUS_POLL_MS`).
    public init(store: any EventStore, refreshInterval: Duration = .seconds(1)) {
        self.store = store
        self.refreshInterval = refreshInterval
        configs = TopicConfigCache(store: store)
        preparer = EventPreparer(store: store)
    }

    /// Appends one event once it is durable.
    /// - Parameters:
    ///   - json: the payload as JSON text (any JSON value); validated, stored as given.
    ///   - id: the event id; a repeated id on the same topic stores nothing and returns the
    ///     first event with `duplicate` set. Default: a new UUIDv7.
    /// - Throws: ``RequestError`` for a bad topic, key, header or payload; ``BrokerError``
    ///   with `unavailable` when the store cannot be written.
    public func publish(
        topic: String, key: String? = nil, headers: [(String, String)]? = nil, json: String, id: String? = nil
    ) async throws
        -> AppendResult
    {
        try await publish(topic: topic, key: key, headers: headers, payload: try RawJSON.payload(json), id: id)
    }

    /// Appends one event whose payload is an `Encodable` value (encoded with `JSONEncoder`).
    public func publish(
        topic: String, key: String? = nil, headers: [(String, String)]? = nil, value: some Encodable, id: String? = nil
    )
        async throws -> AppendResult
    {
        let data = try JSONEncoder().encode(value)
        return try await publish(topic: topic, key: key, headers: headers, payload: RawJSON(trusted: Array(data)), id: id)
    }

    /// Appends one event whose payload is already validated JSON.
    public func publish(topic: String, key: String?, headers: [(String, String)]?, payload: RawJSON, id: String?) async throws -> AppendResult {
        let request = PublishRequest(topic: topic, key: key, headers: headers.map(Headers.init), payload: payload, id: id)
        try request.validate()
        let now = ContinuousClock.now
        let stale = lastRefresh.withLock { last in
            guard let previous = last, now - previous < refreshInterval else {
                last = now
                return true
            }
            return false
        }
        if stale { try await configs.refresh() }
        let config = try await configs.load(topic)
        return try await store.append([try preparer.prepare(request, partitions: config.partitions)])[0]
    }
}
