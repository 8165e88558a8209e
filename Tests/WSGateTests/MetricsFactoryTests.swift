import Metrics
import Prometheus
import StreamBroker
import Testing

@testable import WSGate

/// The swift-metrics factory behind `/metrics`: the latency histograms' buckets and the HELP
/// texts, checked on what the registry emits (no global bootstrap: the factory is used directly).
@Suite("Metrics factory")
struct MetricsFactoryTests {
    func emitted(_ registry: PrometheusCollectorRegistry) -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }

    @Test func latencyHistogramsGetTheMillisecondBucketsAndHelp() {
        let registry = PrometheusCollectorRegistry()
        let factory = BrokerMetricsFactory(registry: registry)
        for name in MetricName.histograms {
            let timer = factory.makeTimer(label: name, dimensions: name == MetricName.appendDuration ? [] : [("topic", "t")])
            timer.recordNanoseconds(3_000_000)
        }
        let text = emitted(registry)
        for name in MetricName.histograms {
            #expect(text.contains("# HELP \(name) "), "\(name) has a HELP line")
            #expect(text.contains("# TYPE \(name) histogram"))
        }
        let append = text.split(separator: "\n").filter { $0.hasPrefix("bus_append_duration_seconds_bucket") }
        let bounds = append.compactMap { line -> String? in
            guard let start = line.range(of: "le=\"")?.upperBound, let end = line[start...].firstIndex(of: "\"") else { return nil }
            return String(line[start..<end])
        }
        #expect(bounds.first == "0.0005")
        #expect(bounds.dropLast().last == "5.0")
        #expect(bounds.last == "+Inf")
        #expect(bounds.count == BrokerMetricsFactory.latencyBuckets.count + 1)
        // 3 ms falls in the 5 ms bucket and above, not in the 2 ms one.
        #expect(text.contains(#"bus_append_duration_seconds_bucket{le="0.002"} 0"#))
        #expect(text.contains(#"bus_append_duration_seconds_bucket{le="0.005"} 1"#))
        #expect(text.contains(#"bus_commit_duration_seconds_count{topic="t"} 1"#))
    }

    @Test func countersAndGaugesGetHelpAndUnknownNamesNone() {
        let registry = PrometheusCollectorRegistry()
        let factory = BrokerMetricsFactory(registry: registry)
        factory.makeCounter(label: MetricName.changeStreamWakeups, dimensions: [("topic", "t")]).increment(by: 2)
        factory.makeCounter(label: "something_else_total", dimensions: []).increment(by: 1)
        factory.makeRecorder(label: "bus_connections", dimensions: [], aggregate: false).record(Int64(4))
        let text = emitted(registry)
        #expect(text.contains("# HELP \(MetricName.changeStreamWakeups) "))
        #expect(text.contains(#"bus_change_stream_wakeups_total{topic="t"} 2"#))
        #expect(text.contains("# HELP bus_connections "))
        #expect(text.contains("bus_connections 4"))
        #expect(!text.contains("# HELP something_else_total"))
        #expect(text.contains("something_else_total 1"))
    }
}
