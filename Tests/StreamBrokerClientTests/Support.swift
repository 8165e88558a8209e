import Foundation
import Models
import Synchronization

@testable import StreamBrokerClient

/// Values collected by concurrent tasks of a test.
final class Collector<Value: Sendable>: Sendable {
    private let values = Mutex<[Value]>([])
    /// Appends and returns the new count.
    @discardableResult
    func append(_ value: Value) -> Int {
        values.withLock {
            $0.append(value)
            return $0.count
        }
    }
    var all: [Value] { values.withLock { $0 } }
    var count: Int { values.withLock { $0.count } }
}

extension BrokerProcess {
    /// A started broker with a long ack timeout (nothing is redelivered by timeout during a test).
    static func started(_ environment: [String: String] = [:]) async throws -> BrokerProcess {
        let broker = try BrokerProcess(environment: ["BUS_ACK_TIMEOUT_MS": "600000"].merging(environment) { $1 })
        try await broker.start()
        return broker
    }

    func client() -> StreamBrokerClient {
        StreamBrokerClient(configuration: .init(url: url, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(500)))
    }

    /// The topic's high watermark of partition 0, from `GET /topics/:topic`.
    func highWatermark(_ topic: String) throws -> Int64? {
        guard let response = Self.http(port: port, "GET", "/topics/\(topic)"), response.status == 200,
            case .array(let partitions)? = try RawJSON(validating: Array(response.body.utf8)).parsed()["partitions"],
            case .number(_, let mark)? = partitions.first?["highWatermark"]
        else { return nil }
        return mark
    }

    /// The group's committed offset on partition 0, from `GET /topics/:topic/offsets`.
    func committed(_ topic: String, group: String) throws -> Int64? {
        guard let response = Self.http(port: port, "GET", "/topics/\(topic)/offsets"), response.status == 200,
            case .array(let groups)? = try RawJSON(validating: Array(response.body.utf8)).parsed()["groups"],
            let entry = groups.first(where: { $0["group"] == .string(group) }),
            case .array(let partitions)? = entry["partitions"],
            case .number(_, let committed)? = partitions.first?["committed"]
        else { return nil }
        return committed
    }
}

/// Takes the next `count` messages of a subscription, or fails after `timeout`.
func take(_ count: Int, from subscription: Subscription, timeout: Duration = .seconds(60)) async throws -> [Message] {
    try await withThrowingTaskGroup(of: [Message]?.self) { group in
        group.addTask {
            var messages: [Message] = []
            for try await message in subscription {
                messages.append(message)
                if messages.count == count { break }
            }
            return messages
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let messages = try await group.next() ?? nil, messages.count == count else {
            throw BrokerProcess.Failure(description: "\(count) messages did not arrive")
        }
        return messages
    }
}

func json(_ text: String) -> RawJSON { RawJSON(trusted: Array(text.utf8)) }
