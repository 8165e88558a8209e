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

extension Broker {
    /// Brings the per-partition group gauges of `/metrics` up to date (called at each scrape).
    public func refreshGauges() async {
        metrics.record(await stats().groups)
    }
}
