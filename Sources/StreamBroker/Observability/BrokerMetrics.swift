import Metrics
import Synchronization

/// Every swift-metrics object the broker reports, created once per label set.
public final class BrokerMetrics: Sendable {
    private struct PerTopic {
        let published: Counter
        let delivered: Counter
        let redelivered: Counter
        let deadLettered: Counter
        let counts: TopicCounts
    }

    /// A group partition's gauges (SPEC §14), set from the dispatchers' snapshots.
    private struct PerPartition {
        let committed: Gauge
        let lag: Gauge
        let inflight: Gauge
        let oldestUnacked: Gauge
    }

    private let topics = Mutex<[String: PerTopic]>([:])
    private let partitions = Mutex<[String: PerPartition]>([:])
    public let connections = Gauge(label: "bus_connections")

    public init() {}

    private func topic(_ name: String) -> PerTopic {
        topics.withLock { topics in
            if let existing = topics[name] { return existing }
            let dimensions = [("topic", name)]
            let created = PerTopic(
                published: Counter(label: "bus_events_published_total", dimensions: dimensions),
                delivered: Counter(label: "bus_events_delivered_total", dimensions: dimensions),
                redelivered: Counter(label: "bus_redeliveries_total", dimensions: dimensions),
                deadLettered: Counter(label: "bus_dead_letters_total", dimensions: dimensions),
                counts: TopicCounts())
            topics[name] = created
            return created
        }
    }

    func published(topic name: String, count: Int) {
        let entry = topic(name)
        entry.published.increment(by: count)
        entry.counts.published.add(count, ordering: .relaxed)
    }

    func delivered(topic name: String, count: Int) {
        let entry = topic(name)
        entry.delivered.increment(by: count)
        entry.counts.delivered.add(count, ordering: .relaxed)
    }

    func redelivered(topic name: String) { topic(name).redelivered.increment() }

    func deadLettered(topic name: String) { topic(name).deadLettered.increment() }

    /// Sets the per (topic, group, partition) gauges — committed offset, lag, messages in flight,
    /// age of the oldest unacked message in seconds (0 with none) — from a stats snapshot.
    /// Partitions this replica no longer delivers are set to 0 in flight and age (their offsets stay).
    func record(_ groups: [Broker.GroupStats]) {
        partitions.withLock { partitions in
            var seen: Set<String> = []
            for g in groups {
                let key = "\(g.topic)\u{0}\(g.group)\u{0}\(g.partition)"
                seen.insert(key)
                let gauges: PerPartition
                if let existing = partitions[key] {
                    gauges = existing
                } else {
                    let dimensions = [("topic", g.topic), ("group", g.group), ("partition", String(g.partition))]
                    gauges = PerPartition(
                        committed: Gauge(label: "bus_group_committed_offset", dimensions: dimensions),
                        lag: Gauge(label: "bus_group_lag", dimensions: dimensions),
                        inflight: Gauge(label: "bus_group_inflight", dimensions: dimensions),
                        oldestUnacked: Gauge(label: "bus_group_oldest_unacked_age_seconds", dimensions: dimensions))
                    partitions[key] = gauges
                }
                gauges.committed.record(g.committed)
                gauges.lag.record(max(0, g.highWatermark - g.committed))
                gauges.inflight.record(g.inflight)
                gauges.oldestUnacked.record(Double(g.oldestUnackedMs ?? 0) / 1000)
            }
            for (key, gauges) in partitions where !seen.contains(key) {
                gauges.inflight.record(0)
                gauges.oldestUnacked.record(0)
            }
        }
    }

    /// Per-topic totals for `/stats` and `system.metrics`.
    func counts() -> [String: TopicCounts] {
        topics.withLock { $0.mapValues(\.counts) }
    }
}

/// Running totals of one topic, with the rates seen at the last sample.
final class TopicCounts: Sendable {
    let published = Atomic<Int>(0)
    let delivered = Atomic<Int>(0)
    private let sample = Mutex<(at: ContinuousClock.Instant, published: Int, delivered: Int, publishRate: Double, deliverRate: Double)>(
        (ContinuousClock.now, 0, 0, 0, 0))

    /// Updates the rates if the last sample is older than a second; returns (publish/s, deliver/s).
    func rates() -> (publish: Double, deliver: Double) {
        let now = ContinuousClock.now
        let published = self.published.load(ordering: .relaxed)
        let delivered = self.delivered.load(ordering: .relaxed)
        return sample.withLock { sample in
            let elapsed = now - sample.at
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if seconds >= 1 {
                sample.publishRate = Double(published - sample.published) / seconds
                sample.deliverRate = Double(delivered - sample.delivered) / seconds
                sample = (now, published, delivered, sample.publishRate, sample.deliverRate)
            }
            return (sample.publishRate, sample.deliverRate)
        }
    }
}
