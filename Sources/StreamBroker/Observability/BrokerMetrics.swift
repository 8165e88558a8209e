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

    private let topics = Mutex<[String: PerTopic]>([:])
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
