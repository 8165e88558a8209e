import Foundation
import Logging
import Models
import NIOSSL
import StreamBrokerClient

/// Where a workload runs: the broker's URLs, and the process when `sbctl bench` started it.
struct BenchTarget: Sendable {
    var label: String
    var webSocketURL: String
    var token: String?
    /// TLS for a wss:// URL (`--cacert`).
    var tls: TLSConfiguration?
    var broker: BrokerUnderTest?
    /// Seconds to wait for a connection (`--timeout`).
    var timeout: Double = 10
}

/// The sizes of the workloads of SPEC §11 (`--quick` shrinks them to a few seconds).
struct WorkloadSizes: Sendable {
    var w1Events = 100_000
    var w1Consumers = 4
    var w1Window = 256
    var w1MaxUnconfirmed = 1_000
    var w2Rate = 1_000
    var w2Seconds = 15
    var w2Groups = 10
    var w3Connections = 5_000
    var w3Events = 20
    var payloadBytes = 256

    static let quick = WorkloadSizes(
        w1Events: 5_000, w2Rate: 200, w2Seconds: 3, w3Connections: 200, w3Events: 3)
}

/// The workloads of SPEC §11, driven with the Swift client. Each returns its figures as JSON
/// members; CPU and memory figures only when the broker is a process started here.
enum Workloads {
    static func client(_ target: BenchTarget) -> StreamBrokerClient {
        var logger = Logger(label: "sbctl.bench")
        logger.logLevel = .critical
        return StreamBrokerClient(
            configuration: .init(url: target.webSocketURL, token: target.token, tls: target.tls, pingInterval: nil), logger: logger)
    }

    /// Connects a client, failing with `unavailable` after the target's timeout.
    static func connect(_ client: StreamBrokerClient, _ target: BenchTarget) async throws {
        try await withTimeout(
            seconds: target.timeout,
            failure: CommandFailure(
                code: "unavailable", message: "cannot connect to \(target.webSocketURL) (--timeout \(target.timeout.formatted()) s)")
        ) { try await client.connect() }
    }

    static func topicName(_ workload: String) -> String {
        "bench.\(workload).\(UUID().uuidString.prefix(8).lowercased())"
    }

    static func seconds(since start: UInt64) -> Double {
        Double(monotonicNanoseconds() - start) / 1e9
    }

    static func round(_ value: Double, _ places: Double = 1) -> JSONValue {
        guard value.isFinite else { return .null }
        if places == 0 { return .int(Int64(value.rounded())) }
        let scale = Foundation.pow(10, places)
        return .double((value * scale).rounded() / scale)
    }

    /// The broker's CPU time and context switches from `before` to `after`, per `count` of
    /// `unit` ("event", "delivery"): `broker_cpu_s`, `broker_cpu_us_per_<unit>`,
    /// `broker_context_switches_per_<unit>`.
    static func usageFigures(from before: BrokerUsage, to after: BrokerUsage, per count: Int, unit: String) -> [(String, JSONValue)] {
        let cpu = after.cpuSeconds - before.cpuSeconds
        let count = Double(max(1, count))
        return [
            ("broker_cpu_s", round(cpu, 2)), ("broker_cpu_us_per_\(unit)", round(cpu / count * 1e6)),
            ("broker_context_switches_per_\(unit)", round(Double(after.contextSwitches - before.contextSwitches) / count, 3)),
        ]
    }

    /// W1, a work queue: one publisher (at most `w1MaxUnconfirmed` unconfirmed), one group of
    /// `w1Consumers` consumers (window `w1Window` each), every event acked.
    static func w1(_ target: BenchTarget, _ sizes: WorkloadSizes) async throws -> [(String, JSONValue)] {
        let topic = topicName("w1")
        let events = sizes.w1Events
        let publisher = client(target)
        let consumers = (0..<sizes.w1Consumers).map { _ in client(target) }
        return try await closing([publisher] + consumers) {
            try await connect(publisher, target)
            var opened: [Subscription] = []
            for consumer in consumers {
                try await connect(consumer, target)
                opened.append(try await consumer.subscribe(topic: topic, group: "w1", from: .earliest, maxInflight: sizes.w1Window))
            }
            let subscriptions = opened
            let latencies = Latencies()
            let delivered = Counter()
            let usageBefore = target.broker?.usage()
            let start = monotonicNanoseconds()
            var confirmedSeconds = 0.0
            try await withThrowingTaskGroup(of: Void.self) { group in
                addConsumers(to: &group, subscriptions, latencies: latencies, delivered: delivered, expected: events)
                try await withThrowingTaskGroup(of: Void.self) { publishing in
                    for index in 0..<events {
                        if index >= sizes.w1MaxUnconfirmed { try await publishing.next() }
                        publishing.addTask {
                            try await publisher.publish(topic: topic, payload: BenchPayload.make(size: sizes.payloadBytes))
                        }
                    }
                    try await publishing.waitForAll()
                }
                confirmedSeconds = seconds(since: start)
                try await group.waitForAll()
            }
            let elapsed = seconds(since: start)
            var figures: [(String, JSONValue)] = [
                ("events", .int(events)), ("seconds", round(elapsed, 3)),
                ("published_per_s", round(Double(events) / confirmedSeconds, 0)),
                ("delivered_per_s", round(Double(events) / elapsed, 0)),
            ]
            figures += latencies.figures
            if let broker = target.broker, let usageBefore {
                let usage = broker.usage()
                figures += usageFigures(from: usageBefore, to: usage, per: events, unit: "event")
                figures += [("broker_cores_busy", round((usage.cpuSeconds - usageBefore.cpuSeconds) / elapsed, 2))]
            }
            return figures
        }
    }

    /// W2, fan-out: `w2Rate` events/s for `w2Seconds` s, `w2Groups` groups of one consumer each.
    static func w2(_ target: BenchTarget, _ sizes: WorkloadSizes) async throws -> [(String, JSONValue)] {
        let topic = topicName("w2")
        let events = sizes.w2Rate * sizes.w2Seconds
        let expected = events * sizes.w2Groups
        let publisher = client(target)
        let consumers = (0..<sizes.w2Groups).map { _ in client(target) }
        return try await closing([publisher] + consumers) {
            try await connect(publisher, target)
            var opened: [Subscription] = []
            for (index, consumer) in consumers.enumerated() {
                try await connect(consumer, target)
                opened.append(try await consumer.subscribe(topic: topic, group: "w2-\(index)", from: .earliest, maxInflight: 256))
            }
            let subscriptions = opened
            let latencies = Latencies()
            let delivered = Counter()
            let usageBefore = target.broker?.usage()
            let start = monotonicNanoseconds()
            try await withThrowingTaskGroup(of: Void.self) { group in
                addConsumers(to: &group, subscriptions, latencies: latencies, delivered: delivered, expected: expected)
                // Paced: every millisecond, publish what is due by then.
                try await withThrowingTaskGroup(of: Void.self) { publishing in
                    var sent = 0
                    while sent < events {
                        let due = min(events, Int(seconds(since: start) * Double(sizes.w2Rate)) + 1)
                        while sent < due {
                            sent += 1
                            publishing.addTask {
                                try await publisher.publish(topic: topic, payload: BenchPayload.make(size: sizes.payloadBytes))
                            }
                        }
                        try await Task.sleep(for: .milliseconds(1))
                    }
                    try await publishing.waitForAll()
                }
                try await waitOrGiveUp(seconds: 30, { delivered.value >= expected }) {
                    for subscription in subscriptions { subscription.unsubscribe() }
                }
                try await group.waitForAll()
            }
            let elapsed = seconds(since: start)
            let count = delivered.value
            var figures: [(String, JSONValue)] = [
                ("events", .int(events)), ("deliveries", .int(count)), ("missing", .int(max(0, expected - count))),
                ("seconds", round(elapsed, 3)),
            ]
            figures += latencies.figures
            if let broker = target.broker, let usageBefore {
                figures += usageFigures(from: usageBefore, to: broker.usage(), per: count, unit: "delivery")
            }
            return figures
        }
    }

    /// W3, connections: `w3Connections` WebSocket connections with one ephemeral subscription
    /// each, then `w3Events` events one second apart.
    static func w3(_ target: BenchTarget, _ sizes: WorkloadSizes) async throws -> [(String, JSONValue)] {
        let topic = topicName("w3")
        let publisher = client(target)
        try await connect(publisher, target)
        // A first event makes the topic exist before the tails start at `latest`.
        try await publisher.publish(topic: topic, payload: BenchPayload.make(size: sizes.payloadBytes))
        let rssBefore = target.broker?.residentBytes()
        let openStart = monotonicNanoseconds()
        let clients = Locked<[StreamBrokerClient]>([])
        var opened: [Subscription] = []
        try await withThrowingTaskGroup(of: Subscription.self) { group in
            for index in 0..<sizes.w3Connections {
                if index >= 100 { opened.append(try await group.next()!) }
                group.addTask {
                    let consumer = client(target)
                    clients.withLock { $0.append(consumer) }
                    try await connect(consumer, target)
                    return try await consumer.subscribe(topic: topic, from: .latest, maxInflight: 64)
                }
            }
            for try await subscription in group { opened.append(subscription) }
        }
        let openSeconds = seconds(since: openStart)
        try await Task.sleep(for: .seconds(1))
        let rssAfter = target.broker?.residentBytes()

        let subscriptions = opened
        let latencies = Latencies()
        let delivered = Counter()
        // Per event (by offset): the latest arrival, to tell when it reached every connection.
        let lastArrival = Locked<[Int64: UInt64]>([:])
        let sentAt = Locked<[Int64: UInt64]>([:])
        let expected = sizes.w3Connections * sizes.w3Events
        let usageBefore = target.broker?.usage()
        try await withThrowingTaskGroup(of: Void.self) { group in
            addConsumers(to: &group, subscriptions, latencies: latencies, delivered: delivered, expected: expected) { message, now in
                lastArrival.withLock { $0[message.offset] = max($0[message.offset] ?? 0, now) }
            }
            for index in 0..<sizes.w3Events {
                if index > 0 { try await Task.sleep(for: .seconds(1)) }
                let now = monotonicNanoseconds()
                let published = try await publisher.publish(topic: topic, payload: BenchPayload.make(size: sizes.payloadBytes, sentAt: now))
                sentAt.withLock { $0[published.offset] = now }
            }
            try await waitOrGiveUp(seconds: 30, { delivered.value >= expected }) {
                for subscription in subscriptions { subscription.unsubscribe() }
            }
            try await group.waitForAll()
        }
        let usageAfter = target.broker?.usage()
        let count = delivered.value
        let reachAll: [Double] = sentAt.withLock { sent in
            lastArrival.withLock { arrivals in
                sent.compactMap { offset, at in arrivals[offset].map { Double($0 - at) / 1e6 } }.sorted()
            }
        }
        for consumer in clients.withLock({ $0 }) { await consumer.close(closeGrace: .zero) }
        await publisher.close()
        var figures: [(String, JSONValue)] = [
            ("connections", .int(sizes.w3Connections)), ("events", .int(sizes.w3Events)), ("deliveries", .int(count)),
            ("missing", .int(max(0, expected - count))), ("connect_seconds", round(openSeconds, 2)),
            (
                "reach_all_ms",
                reachAll.isEmpty ? .null : .object([("p50", round(reachAll[reachAll.count / 2], 2)), ("max", round(reachAll.last!, 2))])
            ),
        ]
        figures += latencies.figures
        if let rssBefore, let rssAfter {
            figures += [
                ("broker_rss_mb", round(Double(rssAfter) / 1_048_576)),
                ("broker_kb_per_connection", round(Double(rssAfter - rssBefore) / 1024 / Double(sizes.w3Connections))),
            ]
        }
        if let usageBefore, let usageAfter { figures += usageFigures(from: usageBefore, to: usageAfter, per: count, unit: "delivery") }
        return figures
    }

    /// One task per subscription: records each message's latency, acks it (a no-op on a tail),
    /// and ends every subscription once `expected` messages arrived in all.
    static func addConsumers(
        to group: inout ThrowingTaskGroup<Void, any Error>, _ subscriptions: [Subscription], latencies: Latencies, delivered: Counter,
        expected: Int, onMessage: @escaping @Sendable (Message, UInt64) -> Void = { _, _ in }
    ) {
        for subscription in subscriptions {
            group.addTask {
                for try await message in subscription {
                    let now = monotonicNanoseconds()
                    if let sentAt = BenchPayload.sentAt(message.payload) { latencies.record(sentAt: sentAt, now: now) }
                    onMessage(message, now)
                    message.ack()
                    if delivered.increment() == expected {
                        for other in subscriptions { other.unsubscribe() }
                    }
                }
            }
        }
    }

    /// Runs `body`, then closes `clients` (also when it throws).
    static func closing<T>(_ clients: [StreamBrokerClient], _ body: () async throws -> T) async throws -> T {
        do {
            let result = try await body()
            for client in clients { await client.close(closeGrace: .zero) }
            return result
        } catch {
            for client in clients { await client.close(closeGrace: .zero) }
            throw error
        }
    }

    /// Polls `done` every 10 ms; after `seconds` without it, runs `giveUp`.
    static func waitOrGiveUp(seconds: Double, _ done: () -> Bool, giveUp: () -> Void) async throws {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while !done() {
            if monotonicNanoseconds() > deadline {
                giveUp()
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
