import Models
import Synchronization

/// The one place topic configs are known from (SPEC §3 `topic_configs`): the broker, its
/// dispatchers and coordinators, the HTTP routes and the ``DirectPublisher`` all read and
/// create configs here.
///
/// A config is read from the store on a miss and cached; a topic nobody configured is created
/// through the store's `ensureTopicConfig`, which keeps a config another replica created first,
/// so a replica never overwrites another's partition count. ``refresh()`` picks up changes made
/// through other replicas.
public final class TopicConfigCache: Sendable {
    private let store: any EventStore
    private let configs = Mutex<[String: TopicConfig]>([:])

    public init(store: any EventStore) {
        self.store = store
    }

    /// The cached config of a topic, without asking the store.
    public func cached(_ topic: String) -> TopicConfig? {
        configs.withLock { $0[topic] }
    }

    /// The cached config, else the defaults (not cached): for settings that may fall back to
    /// defaults, never for partition counts (use ``load(_:)``).
    public func cachedOrDefault(_ topic: String) -> TopicConfig {
        cached(topic) ?? Self.defaults(topic)
    }

    /// How long `system.metrics` keeps snapshots unless its config says otherwise: they are for
    /// live views, and each replica writes one every few seconds.
    public static let metricsRetentionMs: Int64 = 3_600_000

    /// The config a topic nobody configured gets: one partition, kept forever; the broker's own
    /// `system.metrics` for ``metricsRetentionMs``.
    public static func defaults(_ topic: String) -> TopicConfig {
        TopicConfig(topic: topic, retentionMs: topic == Broker.metricsTopic ? metricsRetentionMs : nil)
    }

    /// Every cached config, by topic name.
    public func all() -> [TopicConfig] {
        configs.withLock { Array($0.values) }.sorted { $0.topic < $1.topic }
    }

    /// A topic's config: cached, else read from the store, else created there with the defaults
    /// (one partition). Publishing and subscribing use this.
    public func load(_ topic: String) async throws -> TopicConfig {
        if let cached = cached(topic) { return cached }
        let config = try await store.ensureTopicConfig(Self.defaults(topic))
        remember(config)
        return config
    }

    /// An existing topic's config (asking the store on a miss), or nil; creates nothing.
    public func lookup(_ topic: String) async throws -> TopicConfig? {
        if let cached = cached(topic) { return cached }
        guard let stored = try await store.topicConfigs().first(where: { $0.topic == topic }) else { return nil }
        remember(stored)
        return stored
    }

    /// Re-reads every stored config, so that changes made through another replica arrive here.
    /// - Returns: the configs that replaced a different cached one.
    @discardableResult
    public func refresh() async throws -> [TopicConfig] {
        try await store.topicConfigs().filter { remember($0) }
    }

    /// Creates or updates a config in the store. Partitions may grow, never shrink.
    /// - Throws: `bad_request` when the config would shrink the topic's partitions.
    public func put(_ config: TopicConfig) async throws -> TopicConfig {
        if let current = try await lookup(config.topic), config.partitions < current.partitions {
            throw RequestError.badRequest(
                "topic '\(config.topic)' has \(current.partitions) partitions; partitions can only grow")
        }
        try await store.putTopicConfig(config)
        remember(config)
        return config
    }

    /// Caches a config; true when it replaced a different one.
    @discardableResult
    private func remember(_ config: TopicConfig) -> Bool {
        configs.withLock { configs in
            defer { configs[config.topic] = config }
            guard let previous = configs[config.topic] else { return false }
            return previous != config
        }
    }
}
