import Metrics
import Prometheus
import StreamBroker

/// swift-metrics into the Prometheus registry of `/metrics`, with two things swift-prometheus's
/// own factory cannot give: the HELP text of each metric the broker reports, and (in this one
/// place) the buckets of the latency histograms.
struct BrokerMetricsFactory: MetricsFactory {
    /// Buckets of the latency histograms: half a millisecond to five seconds.
    static let latencyBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
    ]

    /// HELP texts by metric name; a metric not listed has none.
    static let help: [String: String] = [
        "bus_events_published_total": "Events stored by publishes, per topic (duplicates not counted).",
        "bus_events_delivered_total": "MESSAGE frames sent to subscribers, per topic.",
        "bus_redeliveries_total": "Events delivered again after an ack timeout or a nack, per topic.",
        "bus_dead_letters_total": "Events moved to the topic's dead-letter topic, per topic.",
        "bus_connections": "Client connections open now.",
        "bus_auth_refusals_total": "Refused authentications and authorizations, per reason.",
        "bus_group_committed_offset": "Last committed offset of a consumer group's partition.",
        "bus_group_lag": "High-water mark minus committed offset of a consumer group's partition (0 once this replica stopped delivering it).",
        "bus_group_inflight": "Messages delivered and not yet acked in a consumer group's partition on this replica.",
        "bus_group_oldest_unacked_age_seconds": "Age of the oldest unacked message of a consumer group's partition on this replica (0 with none).",
        MetricName.appendDuration:
            "Append latency, one observation per group commit that stored events: from the oldest job of the batch being queued to the batch being durable.",
        MetricName.commitDuration: "Offset commit latency: one observation per write of a consumer group partition's position.",
        MetricName.publishToDelivery:
            "Publish-to-delivery latency per topic, one observation per delivery batch of a consumer group (its first, oldest event, first attempts only): from the event's stored timestamp (whole milliseconds, so up to 1 ms high) to its frame being sent.",
        MetricName.changeStreamWakeups: "Change notices (batches of new events from the store's change feed) that woke a topic's dispatchers.",
        MetricName.changeStreamResumes:
            "MongoDB change streams reopened after an error, per stream (topic, * for the shared stream, or outbox collection).",
        MetricName.changeStreamRescans:
            "Rescans of a topic's events by offset: the change feed reopened, or a safety poll found events a dispatcher had not heard of.",
    ]

    let registry: PrometheusCollectorRegistry
    private let prometheus: PrometheusMetricsFactory

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        var prometheus = PrometheusMetricsFactory(registry: registry)
        for name in MetricName.histograms { prometheus.durationHistogramBuckets[name] = Self.latencyBuckets }
        self.prometheus = prometheus
    }

    private static func descriptor(_ label: String, _ help: String) -> MetricNameDescriptor {
        // The whole name is the label; no unit suffix is added.
        MetricNameDescriptor(metricName: label, unitName: "", helpText: help)
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        guard let help = Self.help[label] else { return prometheus.makeCounter(label: label, dimensions: dimensions) }
        return registry.makeCounter(descriptor: Self.descriptor(label, help), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        prometheus.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard !aggregate, let help = Self.help[label] else {
            return prometheus.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
        }
        return registry.makeGauge(descriptor: Self.descriptor(label, help), labels: dimensions)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        guard let help = Self.help[label] else { return prometheus.makeMeter(label: label, dimensions: dimensions) }
        return registry.makeGauge(descriptor: Self.descriptor(label, help), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        guard let help = Self.help[label] else { return prometheus.makeTimer(label: label, dimensions: dimensions) }
        let buckets = prometheus.durationHistogramBuckets[label] ?? prometheus.defaultDurationHistogramBuckets
        return registry.makeDurationHistogram(descriptor: Self.descriptor(label, help), labels: dimensions, buckets: buckets)
    }

    func destroyCounter(_ handler: any CounterHandler) { prometheus.destroyCounter(handler) }

    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { prometheus.destroyFloatingPointCounter(handler) }

    func destroyRecorder(_ handler: any RecorderHandler) { prometheus.destroyRecorder(handler) }

    func destroyMeter(_ handler: any MeterHandler) { prometheus.destroyMeter(handler) }

    func destroyTimer(_ handler: any TimerHandler) { prometheus.destroyTimer(handler) }
}
