import Foundation
import Histogram
import Models
import Synchronization

/// Publish-to-delivery latencies in microseconds, in an HdrHistogram (3 significant digits).
final class Latencies: Sendable {
    private let histogram = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))

    func record(sentAt: UInt64, now: UInt64 = monotonicNanoseconds()) {
        let micros = now > sentAt ? (now - sentAt) / 1000 : 0
        histogram.withLock { _ = $0.record(min(micros, 600_000_000)) }
    }

    var count: UInt64 { histogram.withLock { $0.totalCount } }

    /// p50, p99, p99.9 and max in milliseconds.
    var figures: [(String, JSONValue)] {
        histogram.withLock { h in
            func ms(_ micros: UInt64) -> JSONValue { .double(Double(micros) / 1000) }
            guard h.totalCount > 0 else { return [("latency_ms", .null)] }
            return [
                (
                    "latency_ms",
                    .object([
                        ("p50", ms(h.valueAtPercentile(50))), ("p99", ms(h.valueAtPercentile(99))),
                        ("p99_9", ms(h.valueAtPercentile(99.9))), ("max", ms(h.max)),
                    ])
                )
            ]
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: publisher and consumers run in this one process.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// The benchmark payload: `{"t":<send time, ns>,"p":"xxx…"}`, padded to `size` bytes.
enum BenchPayload {
    static func make(size: Int, sentAt: UInt64 = monotonicNanoseconds()) -> RawJSON {
        var bytes = Array(#"{"t":"#.utf8)
        bytes.append(contentsOf: String(sentAt).utf8)
        bytes.append(contentsOf: #","p":""#.utf8)
        let padding = max(0, size - bytes.count - 2)
        bytes.append(contentsOf: repeatElement(UInt8(ascii: "x"), count: padding))
        bytes.append(contentsOf: #""}"#.utf8)
        return RawJSON(trusted: bytes)
    }

    /// The send time of a payload made by ``make(size:sentAt:)``.
    static func sentAt(_ payload: RawJSON) -> UInt64? {
        let bytes = payload.bytes
        guard bytes.count > 5, bytes.starts(with: #"{"t":"#.utf8) else { return nil }
        var value: UInt64 = 0
        for byte in bytes[5...] {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { break }
            value = value &* 10 &+ UInt64(byte - UInt8(ascii: "0"))
        }
        return value
    }
}
