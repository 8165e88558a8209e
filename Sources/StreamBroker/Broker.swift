import Foundation
import Logging
import Models
import ServiceLifecycle
import Synchronization

/// The broker engine: topics, publishing, consumer-group dispatchers, audit and metrics, on top
/// of an ``EventStore``. A `Service`: its `run` opens the store, runs every dispatcher and
/// change-feed watcher, and on graceful shutdown flushes commits and closes the store.
public final class Broker: Service, Sendable {
    public let store: any EventStore
    public let settings: BrokerSettings
    public let metrics: BrokerMetrics
    /// Rates and refusals of authenticated clients (SPEC §12).
    public let access: AccessControl
    let logger: Logger

    /// Topic configs, read from the store on a miss (the one place for them).
    public let configs: TopicConfigCache
    let preparer: EventPreparer

    struct Topic {
        var watched = false
        var dispatchers: [UInt64: GroupDispatcher] = [:]
        var groups: [String: GroupDispatcher] = [:]
    }

    struct State {
        var topics: [String: Topic] = [:]
        var nextSerial: UInt64 = 0
        var nextConnection: UInt64 = 0
        var openConnections = 0
        var ready = false
        /// The one opening of the store (see ``openStore()``).
        var opening: Task<Void, any Error>?
        var stopping = false
        var coordinators: [GroupCoordinator] = []
        /// Publishes waiting for their topic's config to be read, in arrival order.
        var waitingForConfig: [String: [(PublishRequest, @Sendable (Result<AppendResult, RequestError>) -> Void)]] = [:]
    }

    var isStopping: Bool { state.withLock { $0.stopping } }

    let state = Mutex(State())
    let jobs: AsyncStream<Job>
    let spawn: AsyncStream<Job>.Continuation

    /// Work the broker runs as a child task of ``run()``: a dispatcher, a lease coordinator, a
    /// topic's poll; with an executor preference, its jobs run there (see ``EventLoopExecutor``).
    struct Job: Sendable {
        var executor: (any TaskExecutor)?
        var work: @Sendable () async -> Void

        init(on executor: (any TaskExecutor)? = nil, _ work: @escaping @Sendable () async -> Void) {
            self.executor = executor
            self.work = work
        }
    }
    let auditRecords: AsyncStream<[UInt8]>
    let auditSink: AsyncStream<[UInt8]>.Continuation

    public static let auditTopic = "system.bus.audit"
    public static let metricsTopic = "system.metrics"

    public init(
        store: any EventStore, settings: BrokerSettings = .init(), metrics: BrokerMetrics = .init(), access: AccessControl = .init(),
        logger: Logger = Logger(label: "broker")
    ) {
        self.store = store
        self.access = access
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        configs = TopicConfigCache(store: store)
        preparer = EventPreparer(store: store)
        (jobs, spawn) = AsyncStream.makeStream()
        (auditRecords, auditSink) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
    }

    // MARK: Lifecycle

    /// Opens the store and reads the topic configs, once: `run` does it unless it was done
    /// before. The gateway calls it before it listens when the store is local (SQLite), so that
    /// no request ever meets a store that is not open yet.
    public func openStore() async throws {
        let opening = state.withLock { state in
            if let opening = state.opening { return opening }
            let opening = Task { [store, configs] in
                try await store.open()
                try await configs.refresh()
            }
            state.opening = opening
            return opening
        }
        try await opening.value
    }

    public func run() async throws {
        try await openStore()
        state.withLock { $0.ready = true }
        logger.info("broker ready", metadata: [LogKey.topics: "\(configs.all().count)", LogKey.replica: "\(settings.replicaID)"])
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runAudit() }
            group.addTask { await self.runMetricsSnapshots() }
            group.addTask { await self.runConfigRefresh() }
            group.addTask { await self.runRetention() }
            for await job in jobs.cancelOnGracefulShutdown() {
                group.addTask(executorPreference: job.executor) { await job.work() }
            }
            await shutdown()
            group.cancelAll()
        }
        await store.close()
        logger.info("broker stopped")
    }

    /// Stops every dispatcher, which flushes its commits.
    private func shutdown() async {
        let (coordinators, dispatchers) = state.withLock { state -> ([GroupCoordinator], [GroupDispatcher]) in
            state.stopping = true
            state.ready = false
            return (state.coordinators, state.topics.values.flatMap { $0.dispatchers.values })
        }
        // Leases first (each coordinator has its dispatcher commit, then releases), so that
        // other replicas take over at once; then every dispatcher flushes its commits.
        for coordinator in coordinators { await coordinator.stop() }
        for dispatcher in dispatchers { await dispatcher.stop() }
        auditSink.finish()
    }

    public func isReady() async -> Bool {
        guard state.withLock({ $0.ready }) else { return false }
        return await store.isReady()
    }

    // MARK: Topics

    /// Creates or updates a topic config; the topic's dispatchers learn about it.
    public func putTopicConfig(_ config: TopicConfig) async throws -> TopicConfig {
        let stored = try await configs.put(config)
        configChanged(stored)
        audit(kind: "topic.config", topic: config.topic, fields: [("config", config.jsonValue)])
        return stored
    }

    /// Sends a changed config to the topic's dispatchers.
    func configChanged(_ config: TopicConfig) {
        for dispatcher in dispatchers(of: config.topic) { dispatcher.send(.config(config)) }
    }

    public func highWatermarks(topic: String) async throws -> [Int64] {
        try await store.highWatermarks(topic: topic, partitions: try await configs.load(topic).partitions)
    }
}
