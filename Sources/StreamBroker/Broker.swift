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
    let logger: Logger

    /// Topic configs, read from the store on a miss (the one place for them).
    public let configs: TopicConfigCache
    private let preparer: EventPreparer

    private struct Topic {
        var watched = false
        var dispatchers: [UInt64: GroupDispatcher] = [:]
        var groups: [String: GroupDispatcher] = [:]
    }

    private struct State {
        var topics: [String: Topic] = [:]
        var nextSerial: UInt64 = 0
        var nextConnection: UInt64 = 0
        var openConnections = 0
        var ready = false
        var storeOpened = false
        var stopping = false
        var coordinators: [GroupCoordinator] = []
        /// Publishes waiting for their topic's config to be read, in arrival order.
        var waitingForConfig: [String: [(PublishRequest, @Sendable (Result<AppendResult, RequestError>) -> Void)]] = [:]
    }

    var isStopping: Bool { state.withLock { $0.stopping } }

    private let state = Mutex(State())
    private let jobs: AsyncStream<@Sendable () async -> Void>
    private let spawn: AsyncStream<@Sendable () async -> Void>.Continuation
    private let auditRecords: AsyncStream<[UInt8]>
    private let auditSink: AsyncStream<[UInt8]>.Continuation

    public static let auditTopic = "system.bus.audit"
    public static let metricsTopic = "system.metrics"

    public init(store: any EventStore, settings: BrokerSettings = .init(), metrics: BrokerMetrics = .init(), logger: Logger = Logger(label: "broker")) {
        self.store = store
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
        guard state.withLock({ state in
            defer { state.storeOpened = true }
            return !state.storeOpened
        }) else { return }
        try await store.open()
        try await configs.refresh()
    }

    public func run() async throws {
        try await openStore()
        state.withLock { $0.ready = true }
        logger.info("broker ready", metadata: ["topics": "\(configs.all().count)", "replica": "\(settings.replicaID)"])
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runAudit() }
            group.addTask { await self.runMetricsSnapshots() }
            group.addTask { await self.runConfigRefresh() }
            group.addTask { await self.runRetention() }
            for await job in jobs.cancelOnGracefulShutdown() {
                group.addTask { await job() }
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
    private func configChanged(_ config: TopicConfig) {
        for dispatcher in dispatchers(of: config.topic) { dispatcher.send(.config(config)) }
    }

    public func highWatermarks(topic: String) async throws -> [Int64] {
        try await store.highWatermarks(topic: topic, partitions: try await configs.load(topic).partitions)
    }

    // MARK: Publishing

    /// Appends one event; `completion` runs once it is durable (on the store's thread).
    ///
    /// The partition count comes from the topic's config; a publish to a topic whose config is
    /// not known here yet waits (in order, behind earlier ones) until it has been read.
    public func publish(_ request: PublishRequest, completion: @escaping @Sendable (Result<AppendResult, RequestError>) -> Void) {
        let (config, first) = state.withLock { state -> (TopicConfig?, Bool) in
            if state.waitingForConfig[request.topic] == nil, let config = configs.cached(request.topic) { return (config, false) }
            let first = state.waitingForConfig[request.topic] == nil
            state.waitingForConfig[request.topic, default: []].append((request, completion))
            return (nil, first)
        }
        if let config {
            append(request, config: config, completion: completion)
        } else if first {
            // Not a job of `run`'s task group: publishes made while the broker shuts down
            // (audit records, dead letters) must still complete.
            Task { await self.releaseWaiting(topic: request.topic) }
        }
    }

    private func releaseWaiting(topic: String) async {
        let config: TopicConfig
        do {
            config = try await configs.load(topic)
        } catch {
            let waiting = state.withLock { $0.waitingForConfig.removeValue(forKey: topic) ?? [] }
            for (request, completion) in waiting { completion(.failure(RequestError(error, rid: request.rid))) }
            return
        }
        while true {
            let waiting = state.withLock { state in
                let waiting = state.waitingForConfig[topic] ?? []
                state.waitingForConfig[topic] = waiting.isEmpty ? nil : []
                return waiting
            }
            if waiting.isEmpty { return }
            for (request, completion) in waiting { append(request, config: config, completion: completion) }
        }
    }

    private func append(_ request: PublishRequest, config: TopicConfig, completion: @escaping @Sendable (Result<AppendResult, RequestError>) -> Void) {
        let append: AppendRequest
        do throws(RequestError) {
            append = try preparer.prepare(request, partitions: config.partitions)
        } catch {
            return completion(.failure(error))
        }
        let metrics = self.metrics
        store.append([append]) { result in
            switch result {
            case .success(let results):
                if !results[0].duplicate { metrics.published(topic: request.topic, count: 1) }
                completion(.success(results[0]))
            case .failure(let error):
                completion(.failure(RequestError(error, rid: request.rid)))
            }
        }
    }

    /// Validates and appends several events in one store batch, in order; one result per
    /// request (the outbox drain's way in).
    public func publish(batch requests: [PublishRequest]) async throws -> [AppendResult] {
        guard !requests.isEmpty else { return [] }
        var prepared: [AppendRequest] = []
        for request in requests {
            try request.validate()
            prepared.append(try preparer.prepare(request, partitions: try await configs.load(request.topic).partitions))
        }
        let results = try await store.append(prepared)
        for result in results where !result.duplicate { metrics.published(topic: result.event.topic, count: 1) }
        return results
    }

    public func publish(_ request: PublishRequest) async throws(RequestError) -> AppendResult {
        let result = await withCheckedContinuation { continuation in
            publish(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Publishes a failed message to `${topic}.DLQ` with the headers of SPEC §6.
    func deadLetter(_ event: Event, group: String, attempts: Int, reason: String?) async throws {
        var headers = event.headers?.pairs ?? []
        headers.append(contentsOf: [
            ("x-original-topic", event.topic), ("x-original-partition", String(event.partition)),
            ("x-original-offset", String(event.offset)), ("x-original-group", group),
            ("x-attempts", String(attempts)), ("x-last-reason", reason ?? ""),
        ])
        let request = PublishRequest(
            topic: "\(event.topic).DLQ", key: event.key, headers: Headers(headers), payload: event.payload,
            id: "dlq:\(group):\(event.partition):\(event.offset):\(event.id)")
        _ = try await publish(request)
        metrics.deadLettered(topic: event.topic)
        audit(
            kind: "dead_letter", topic: event.topic,
            fields: [
                ("group", .string(group)), ("partition", .int(event.partition)), ("offset", .int(event.offset)),
                ("attempts", .int(attempts)), ("reason", reason.map(JSONValue.string) ?? .null),
            ])
    }

    // MARK: Subscriptions

    /// Starts serving one client connection.
    public func connect() -> Session {
        let (id, open) = state.withLock { state -> (UInt64, Int) in
            state.nextConnection += 1
            state.openConnections += 1
            return (state.nextConnection, state.openConnections)
        }
        metrics.connections.record(Double(open))
        return Session(broker: self, connection: ClientConnection(id: id))
    }

    /// A session ended (called once per ``connect()``).
    func disconnected() {
        let open = state.withLock { state -> Int in
            state.openConnections -= 1
            return state.openConnections
        }
        metrics.connections.record(Double(open))
    }

    /// The dispatcher of a group (shared), or a new one for an ephemeral subscription.
    func dispatcher(topic: String, group: String?) -> GroupDispatcher {
        let (dispatcher, isNew, startWatcher) = state.withLock { state -> (GroupDispatcher, Bool, Bool) in
            if let group, let existing = state.topics[topic]?.groups[group] { return (existing, false, false) }
            if state.topics[topic] == nil { state.topics[topic] = Topic() }
            state.nextSerial += 1
            let dispatcher = GroupDispatcher(topic: topic, group: group, serial: state.nextSerial, broker: self)
            state.topics[topic]!.dispatchers[dispatcher.serial] = dispatcher
            if let group { state.topics[topic]!.groups[group] = dispatcher }
            let startWatcher = !state.topics[topic]!.watched
            state.topics[topic]!.watched = true
            return (dispatcher, true, startWatcher)
        }
        if startWatcher {
            // Subscribe to the change feed before any dispatcher reads its high-water marks.
            let changes = store.changes(topic: topic)
            spawn.yield { await self.watch(topic: topic, changes: changes) }
        }
        if isNew {
            spawn.yield { await dispatcher.run() }
            if let group, let coordination = store.coordination {
                let coordinator = GroupCoordinator(dispatcher: dispatcher, group: group, coordination: coordination, broker: self)
                state.withLock { $0.coordinators.append(coordinator) }
                spawn.yield { await coordinator.run() }
            }
        }
        return dispatcher
    }

    func unregister(topic: String, serial: UInt64) {
        state.withLock { state in
            guard let removed = state.topics[topic]?.dispatchers.removeValue(forKey: serial) else { return }
            if let group = removed.group, state.topics[topic]?.groups[group]?.serial == serial {
                state.topics[topic]?.groups[group] = nil
            }
        }
    }

    private func dispatchers(of topic: String) -> [GroupDispatcher] {
        state.withLock { state in state.topics[topic].map { Array($0.dispatchers.values) } ?? [] }
    }

    /// The doorbell of one topic: new events from the change feed, and the safety poll.
    private func watch(topic: String, changes: AsyncStream<[Event]>) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(self.settings.pollMs))
                    guard let marks = try? await self.highWatermarks(topic: topic) else { continue }
                    for dispatcher in self.dispatchers(of: topic) { dispatcher.send(.highWatermarks(marks)) }
                }
            }
            for await events in changes {
                if events.isEmpty {
                    // The feed (re)opened: rescan by offset from the current high-water marks.
                    guard let marks = try? await highWatermarks(topic: topic) else { continue }
                    for dispatcher in dispatchers(of: topic) { dispatcher.send(.highWatermarks(marks)) }
                } else {
                    for dispatcher in dispatchers(of: topic) { dispatcher.send(.appended(events)) }
                }
            }
            group.cancelAll()
        }
    }

    /// Moves a group to a new position (SPEC §8 reset).
    public func resetGroup(topic: String, group: String, from: StartPosition) async throws -> [GroupPosition] {
        let dispatcher = dispatcher(topic: topic, group: group)
        let result = await withCheckedContinuation { continuation in
            dispatcher.send(.reset(from, continuation))
        }
        return try result.get()
    }

    // MARK: Audit and metrics

    /// Queues a `system.bus.audit` record: decisions, not traffic.
    func audit(kind: String, topic: String, fields: [(String, JSONValue)]) {
        var members: [(String, JSONValue)] = [
            ("kind", .string(kind)), ("topic", .string(topic)), ("replica", .string(settings.replicaID)),
            ("ts", .int(Int64(Date().timeIntervalSince1970 * 1000))),
        ]
        members.append(contentsOf: fields)
        auditSink.yield(JSONValue.object(members).jsonBytes)
    }

    private func runAudit() async {
        for await record in auditRecords {
            do {
                _ = try await publish(PublishRequest(topic: Self.auditTopic, payload: RawJSON(trusted: record)))
            } catch {
                logger.warning("could not write an audit record", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Deletes events older than their topic's `retentionMs`. With several replicas each topic's
    /// sweep runs on one of them: whoever takes the `job:retention:TOPIC` lease (held until it
    /// expires, so the others skip that round).
    private func runRetention() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.retentionIntervalMs)) } catch { return }
            for config in configs.all() {
                guard let retention = config.retentionMs else { continue }
                do {
                    if let coordination = store.coordination {
                        let lease = LeaseID.job("retention:\(config.topic)")
                        let ttl = max(settings.leaseTTLMs, settings.retentionIntervalMs / 2)
                        guard try await coordination.takeLease(lease, owner: settings.replicaID, ttlMs: ttl) != nil else { continue }
                    }
                    let cutoff = Int64(Date().timeIntervalSince1970 * 1000) - retention
                    let deleted = try await store.deleteEvents(topic: config.topic, olderThan: cutoff)
                    if deleted > 0 {
                        logger.info("retention deleted events", metadata: ["topic": "\(config.topic)", "deleted": "\(deleted)"])
                    }
                } catch {
                    logger.warning("retention sweep failed", metadata: ["topic": "\(config.topic)", "error": "\(error)"])
                }
            }
        }
    }

    /// Picks up topic configs created or changed through other replicas.
    private func runConfigRefresh() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.pollMs)) } catch { return }
            do {
                for changed in try await configs.refresh() { configChanged(changed) }
            } catch { logger.debug("config refresh failed", metadata: ["error": "\(error)"]) }
        }
    }

    private func runMetricsSnapshots() async {
        guard settings.metricsIntervalMs > 0 else { return }
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.metricsIntervalMs)) } catch { return }
            let counts = metrics.counts().filter { !$0.key.hasPrefix("system.") }
            guard !counts.isEmpty else { continue }
            var topics: [(String, JSONValue)] = []
            for (topic, count) in counts.sorted(by: { $0.key < $1.key }) {
                let rates = count.rates()
                topics.append(
                    (
                        topic,
                        .object([
                            ("published", .int(Int64(count.published.load(ordering: .relaxed)))),
                            ("delivered", .int(Int64(count.delivered.load(ordering: .relaxed)))),
                            ("publishRate", .number(rates.publish, integer: nil)),
                            ("deliverRate", .number(rates.deliver, integer: nil)),
                        ])
                    ))
            }
            let payload = JSONValue.object([
                ("replica", .string(settings.replicaID)), ("ts", .int(Int64(Date().timeIntervalSince1970 * 1000))),
                ("topics", .object(topics)),
            ])
            _ = try? await publish(PublishRequest(topic: Self.metricsTopic, payload: RawJSON(trusted: payload.jsonBytes)))
        }
    }

    // MARK: Stats

    public struct GroupStats: Sendable {
        public var topic: String
        public var group: String
        public var partition: Int
        public var committed: Int64
        public var highWatermark: Int64
        public var inflight: Int
        public var maxInflight: Int
        public var oldestUnackedMs: Int64?
        public var redeliveries: Int
        public var deadLetters: Int
        public var connections: Int
        public var epoch: Int64
    }

    /// Which partitions of a group this replica delivers, and to how many local connections.
    public struct Ownership: Sendable {
        public var topic: String
        public var group: String
        public var partitions: [Int]
        public var connections: Int
    }

    public struct TopicStats: Sendable {
        public var topic: String
        public var published: Int
        public var delivered: Int
        public var publishRate: Double
        public var deliverRate: Double
    }

    public func stats() async -> (topics: [TopicStats], groups: [GroupStats], ownership: [Ownership]) {
        let topics = metrics.counts().map { topic, counts in
            let rates = counts.rates()
            return TopicStats(
                topic: topic, published: counts.published.load(ordering: .relaxed), delivered: counts.delivered.load(ordering: .relaxed),
                publishRate: rates.publish, deliverRate: rates.deliver)
        }.sorted { $0.topic < $1.topic }
        let dispatchers = state.withLock { state in
            state.topics.values.flatMap { $0.groups.values }
        }
        var groups: [GroupStats] = []
        var ownership: [Ownership] = []
        for dispatcher in dispatchers {
            guard let group = dispatcher.group else { continue }
            let snapshot = await dispatcher.snapshot()
            ownership.append(
                Ownership(
                    topic: dispatcher.topic, group: group, partitions: snapshot.filter(\.owned).map(\.partition),
                    connections: dispatcher.localMembers.load(ordering: .relaxed)))
            for p in snapshot where p.owned {
                groups.append(
                    GroupStats(
                        topic: dispatcher.topic, group: group, partition: p.partition, committed: p.committed,
                        highWatermark: p.highWatermark, inflight: p.inflight, maxInflight: p.maxInflight,
                        oldestUnackedMs: p.oldestUnackedMs, redeliveries: p.redeliveries, deadLetters: p.deadLetters,
                        connections: p.connections, epoch: p.epoch))
            }
        }
        groups.sort { ($0.topic, $0.group, $0.partition) < ($1.topic, $1.group, $1.partition) }
        ownership.sort { ($0.topic, $0.group) < ($1.topic, $1.group) }
        return (topics, groups, ownership)
    }
}

extension JSONValue {
    static func int(_ value: some BinaryInteger) -> JSONValue { .number(Double(value), integer: Int64(value)) }
}
