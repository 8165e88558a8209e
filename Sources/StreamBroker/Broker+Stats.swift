import Models

// What `/stats` shows.
extension Broker {
    /// One owned partition of a consumer group, as `/stats` shows it.
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

    /// Publish and delivery counts and rates of one topic.
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

// The JSON of `/stats`, also carried by each `system.metrics` snapshot (one encoding for both).
extension Broker.TopicStats {
    public var jsonValue: JSONValue {
        .object([
            ("topic", .string(topic)), ("published", .int(published)), ("delivered", .int(delivered)),
            ("publishRate", .double(publishRate)), ("deliverRate", .double(deliverRate)),
        ])
    }
}

extension Broker.GroupStats {
    public var jsonValue: JSONValue {
        .object([
            ("topic", .string(topic)), ("group", .string(group)), ("partition", .int(partition)),
            ("committed", .int(committed)), ("highWatermark", .int(highWatermark)),
            ("lag", .int(max(0, highWatermark - committed))), ("inflight", .int(inflight)),
            ("maxInflight", .int(maxInflight)), ("oldestUnackedMs", oldestUnackedMs.map { .int($0) } ?? .null),
            ("redeliveries", .int(redeliveries)), ("deadLetters", .int(deadLetters)), ("connections", .int(connections)),
            ("epoch", .int(epoch)),
        ])
    }
}

extension Broker.Ownership {
    public var jsonValue: JSONValue {
        .object([
            ("topic", .string(topic)), ("group", .string(group)), ("partitions", .array(partitions.map { .int($0) })),
            ("connections", .int(connections)), ("idle", .bool(partitions.isEmpty && connections > 0)),
        ])
    }
}

extension Broker {
    /// The body of `GET /stats`: this replica, its topics' counts and rates, the group
    /// partitions it owns and its ownership per group.
    public func statsJSON() async -> JSONValue {
        let stats = await stats()
        return .object([
            ("replica", .string(settings.replicaID)), ("topics", .array(stats.topics.map(\.jsonValue))),
            ("groups", .array(stats.groups.map(\.jsonValue))), ("ownership", .array(stats.ownership.map(\.jsonValue))),
        ])
    }

    /// WebSocket connections open on this replica now.
    public var openConnections: Int { state.withLock { $0.openConnections } }
}

extension Broker {
    /// Brings the per-partition group gauges of `/metrics` up to date (called at each scrape).
    public func refreshGauges() async {
        metrics.record(await stats().groups)
    }
}
