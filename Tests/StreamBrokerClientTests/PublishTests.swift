import Foundation
import Models
import Testing

@testable import StreamBrokerClient

struct Order: Codable, Equatable {
    var n: Int
}

/// Publishing against a real broker: confirmations, order, broker errors, and retries across a crash.
@Suite("Client publishing", .serialized)
struct PublishTests {
    @Test func confirmationsComeBackInOffsetOrder() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()

        // 50 publishes in flight at once: each confirmation matches its own publish.
        let concurrent = try await withThrowingTaskGroup(of: (Int, Published).self) { group in
            for n in 1...50 { group.addTask { (n, try await client.publish(topic: "orders", payload: Order(n: n))) } }
            return try await group.reduce(into: [Int: Published]()) { $0[$1.0] = $1.1 }
        }
        #expect(concurrent.values.map(\.offset).sorted() == Array(1...50))
        #expect(Set(concurrent.values.map(\.id)).count == 50)
        #expect(concurrent.values.allSatisfy { !$0.duplicate && $0.topic == "orders" && $0.partition == 0 })
        // Sequential publishes get consecutive offsets.
        var sequential: [Published] = []
        for n in 51...60 {
            sequential.append(try await client.publish(topic: "orders", key: "k", headers: ["h": "v"], payload: json(#"{"n":\#(n)}"#)))
        }
        #expect(sequential.map(\.offset) == Array(51...60))

        // Read back in offset order, each offset carrying the id its confirmation named.
        let tail = try await client.subscribe(topic: "orders", from: .earliest, maxInflight: 8)
        let messages = try await take(60, from: tail)
        #expect(messages.map(\.offset) == Array(1...60))
        for message in messages.prefix(50) {
            let order = try message.decode(Order.self)
            #expect(concurrent[order.n]?.offset == message.offset && concurrent[order.n]?.id == message.id)
        }
        #expect(messages[50].key == "k" && messages[50].headers == Headers([("h", "v")]) && messages[50].payload == json(#"{"n":51}"#))
        #expect(messages.allSatisfy { $0.group == nil && $0.attempt == 1 && $0.ts > 0 })

        // The same id again is stored once.
        let again = try await client.publish(topic: "orders", payload: json("0"), id: sequential[0].id)
        #expect(again.duplicate && again.offset == 51)
        await client.close()
    }

    @Test func brokerErrorsCarryTheBrokersCode() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()
        do {
            try await client.publish(topic: "bad topic!", payload: json("1"))
            Issue.record("a bad topic name was accepted")
        } catch let error as StreamBrokerClientError {
            #expect(error.code == .broker(.badRequest) && error.brokerCode == .badRequest && !error.message.isEmpty)
        }
        do {
            _ = try await client.subscribe(topic: "bad topic!")
            Issue.record("a bad subscription was accepted")
        } catch let error as StreamBrokerClientError {
            #expect(error.code == .broker(.badRequest))
        }
        // The connection stays usable.
        #expect(try await client.publish(topic: "fine", payload: json("1")).offset == 1)
        await client.close()
        await #expect(throws: StreamBrokerClientError(.closed, "the client is closed")) {
            try await client.publish(topic: "fine", payload: json("2"))
        }
    }

    /// Publishes in flight when the broker dies (SIGKILL) are sent again after the restart with
    /// their ids: every one is stored exactly once.
    @Test func publishesInFlightAtACrashAreStoredOnce() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        try broker.createTopic(#"{"topic":"crash","partitions":1}"#)
        let client = broker.client()
        try await client.connect()

        // A burst, killed after the first confirmations.
        let confirmed = Collector<Published>()
        let burst = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in 1...200 {
                    group.addTask {
                        if confirmed.append(try await client.publish(topic: "crash", payload: Order(n: n))) == 20 { broker.kill() }
                    }
                }
                try await group.waitForAll()
            }
        }
        try await waitUntil("the broker was killed") { !broker.isRunning }
        try await broker.start()
        try await burst.value
        #expect(confirmed.count == 200)

        // Publishes sent while the broker is frozen are certainly in flight when it dies.
        broker.freeze()
        let frozen = Task {
            try await withThrowingTaskGroup(of: Published.self) { group in
                for n in 201...205 { group.addTask { try await client.publish(topic: "crash", payload: Order(n: n)) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        try await waitUntil("5 publishes in flight") { client.state.withLock { $0.publishes.count } == 5 }
        broker.kill()
        try await broker.start()
        let late = try await frozen.value
        #expect(late.count == 5)

        let all = confirmed.all + late
        #expect(Set(all.map(\.offset)) == Set(1...205), "each publish has its own offset")
        #expect(try broker.highWatermark("crash") == 205, "nothing was stored twice")
        let tail = try await client.subscribe(topic: "crash", from: .earliest, maxInflight: 64)
        let stored = try await take(205, from: tail)
        #expect(Set(stored.map(\.id)) == Set(all.map(\.id)))
        #expect(Set(try stored.map { try $0.decode(Order.self).n }) == Set(1...205))
        await client.close()
    }

    /// A broker that stops answering (SIGSTOP) is noticed by the pings: the client drops the
    /// connection, reconnects when the broker answers again, and the publish made meanwhile is stored once.
    @Test func aFrozenBrokerIsNoticedByPings() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        try broker.createTopic(#"{"topic":"pings","partitions":1}"#)
        let client = StreamBrokerClient(
            configuration: .init(url: broker.url, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(500), pingInterval: .milliseconds(300))
        )
        try await client.connect()
        #expect(try await client.publish(topic: "pings", payload: json("1")).offset == 1)
        let generation = client.state.withLock { $0.generation }
        broker.freeze()
        let publishing = Task { try await client.publish(topic: "pings", payload: json("2")) }
        try await waitUntil("the frozen connection dropped") { client.state.withLock { $0.connection == nil } }
        broker.thaw()
        let second = try await publishing.value
        #expect(second.offset == 2)
        // Confirmed on a new connection (the frozen one was dropped).
        #expect(client.state.withLock { $0.connection?.generation ?? 0 } > generation)
        #expect(try broker.highWatermark("pings") == 2)
        await client.close()
    }
}
