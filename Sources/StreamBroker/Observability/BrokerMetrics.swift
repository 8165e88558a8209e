import Foundation
import Metrics
import Synchronization

/// Every swift-metrics object the broker reports, created once per label set.
///
/// The names of the metrics are ``MetricName``'s; the gateway gives the histograms their
/// buckets and every metric its HELP text.
public final class BrokerMetrics: Sendable {
    /// One topic's metrics. A dispatcher or watcher keeps its topic's, so that recording on a
    /// hot path is no dictionary look-up. A class: a look-up hands out one reference, not a
    /// copy of every instrument's.
    final class PerTopic: Sendable {
        let published: Counter
        let delivered: Counter
        let redelivered: Counter
        let deadLettered: Counter
        /// One observation per offset commit write (SPEC §14).
        let commitDuration: Timer
        /// One observation per delivery batch of a consumer group: its first event (the oldest
        /// of the batch), from its stored timestamp to the frames being handed to the connection.
        let publishToDelivery: Timer
        /// One per change notice (a batch of new events) that woke the topic's dispatchers.
        let wakeups: Counter
        /// One per rescan by offset (see ``MetricName/changeStreamRescans``).
        let rescans: Counter
        let counts: TopicCounts

        init(
            published: Counter, delivered: Counter, redelivered: Counter, deadLettered: Counter, commitDuration: Timer,
            publishToDelivery: Timer, wakeups: Counter, rescans: Counter, counts: TopicCounts
        ) {
            self.published = published
            self.delivered = delivered
            self.redelivered = redelivered
            self.deadLettered = deadLettered
            self.commitDuration = commitDuration
            self.publishToDelivery = publishToDelivery
            self.wakeups = wakeups
            self.rescans = rescans
            self.counts = counts
        }

        /// `count` events delivered: the Prometheus counter and the `/stats` total.
        func recordDelivered(_ count: Int) {
            delivered.increment(by: count)
            counts.delivered.add(count, ordering: .relaxed)
        }
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

    func topic(_ name: String) -> PerTopic {
        topics.withLock { topics in
            if let existing = topics[name] { return existing }
            let dimensions = [("topic", name)]
            let created = PerTopic(
                published: Counter(label: "bus_events_published_total", dimensions: dimensions),
                delivered: Counter(label: "bus_events_delivered_total", dimensions: dimensions),
                redelivered: Counter(label: "bus_redeliveries_total", dimensions: dimensions),
                deadLettered: Counter(label: "bus_dead_letters_total", dimensions: dimensions),
                commitDuration: Timer(label: MetricName.commitDuration, dimensions: dimensions),
                publishToDelivery: Timer(label: MetricName.publishToDelivery, dimensions: dimensions),
                wakeups: Counter(label: MetricName.changeStreamWakeups, dimensions: dimensions),
                rescans: Counter(label: MetricName.changeStreamRescans, dimensions: dimensions),
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

    func deadLettered(topic name: String) { topic(name).deadLettered.increment() }

    /// Sets the per (topic, group, partition) gauges — committed offset, lag, messages in flight,
    /// age of the oldest unacked message in seconds (0 with none) — from a stats snapshot.
    /// Partitions this replica no longer delivers are set to 0 lag, in flight and age (their
    /// committed offset stays), so that a `max` over replicas shows the owner's figures.
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
                gauges.lag.record(0)
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

/// The names of the latency histograms and change-stream counters (SPEC §14), for the gateway
/// that gives them buckets and HELP texts.
public enum MetricName {
    /// Append latency, one observation per group commit that stored events: from the moment
    /// the oldest job of the batch was queued for the store's writer until the batch was
    /// durable (SQLite `COMMIT` done; MongoDB `insert` acknowledged).
    public static let appendDuration = "bus_append_duration_seconds"
    /// Offset commit latency: one observation per write of a group partition's position.
    public static let commitDuration = "bus_commit_duration_seconds"
    /// Publish-to-delivery latency, per topic: one observation per delivery batch of a
    /// consumer group (its first, oldest, event; first attempts only), from the event's stored
    /// timestamp to its frame being handed to the subscriber's connection.
    public static let publishToDelivery = "bus_publish_to_delivery_seconds"
    /// Change notices (a batch of new events from the store's change feed) that woke a
    /// topic's dispatchers, per topic.
    public static let changeStreamWakeups = "bus_change_stream_wakeups_total"
    /// MongoDB change streams reopened after an error (resumed from their token, or opened
    /// again from now), per stream.
    public static let changeStreamResumes = "bus_change_stream_resumes_total"
    /// Rescans of a topic's events by offset: the change feed reopened (not its first open),
    /// or a safety poll found events a dispatcher had not heard of from the feed.
    public static let changeStreamRescans = "bus_change_stream_rescans_total"

    /// The histograms, with the latencies they are for: milliseconds, up to seconds.
    public static let histograms = [appendDuration, commitDuration, publishToDelivery]
}

/// The metrics a store records itself (it exists before the broker and its ``BrokerMetrics``).
final class StoreMetrics: Sendable {
    let appendDuration = Timer(label: MetricName.appendDuration)

    /// Records a group commit that stored events, from `queuedAt` (``MonotonicTime/now()``).
    func appended(queuedAt: UInt64) {
        appendDuration.recordNanoseconds(Int64(MonotonicTime.now() &- queuedAt))
    }
}

/// Nanoseconds of the monotonic clock (one `clock_gettime`), for latencies measured across
/// threads without building a `ContinuousClock.Instant`.
enum MonotonicTime {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }

    /// The wall clock in nanoseconds (events' `ts` are its milliseconds).
    static func wallNanoseconds() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) &* 1_000_000_000 &+ Int64(spec.tv_nsec)
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
