import Foundation
import HummingbirdWSClient
import Logging
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// The direct publisher and outbox writer APIs, read back by a WebSocket subscriber of a real
/// `stream-broker` process on the same MongoDB.
@Suite("Direct publisher", .serialized)
struct DirectPublisherTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func validatesBeforeWriting() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        let publisher = DirectPublisher(store: store)
        await #expect(throws: RequestError.self) { try await publisher.publish(topic: "bad topic", json: "1") }
        await #expect(throws: RequestError.self) { try await publisher.publish(topic: "t", json: "{nope") }
        await #expect(throws: RequestError.self) { try await publisher.publish(topic: "t", json: "1", id: "") }
        let first = try await publisher.publish(topic: "t", key: "cust-7", headers: [("ct", "json")], json: #"{"n":1}"#, id: "a")
        let again = try await publisher.publish(topic: "t", json: "2", id: "a")
        #expect(first.event.offset == 1 && !first.duplicate)
        #expect(again.duplicate && again.event.offset == 1)
        #expect(try await store.highWatermarks(topic: "t", partitions: 1) == [1])
        await store.close()
    }

    /// Partitions added through a broker (here: straight in the store) are used once the
    /// publisher's configs are re-read.
    @Test func picksUpPartitionsAddedElsewhere() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        let publisher = DirectPublisher(store: store, refreshInterval: .zero)
        let key = "ключ-7"
        #expect(try await publisher.publish(topic: "grow", key: key, json: "1").event.partition == 0)
        try await store.putTopicConfig(TopicConfig(topic: "grow", partitions: 7))
        let after = try await publisher.publish(topic: "grow", key: key, json: "2")
        #expect(after.event.partition == Partitioner.partition(forKey: key, partitions: 7))
        #expect(after.event.partition != 0)
        await store.close()
    }

    /// The outbox writer applies the rules every way in applies, before it writes a row.
    @Test func outboxWriterValidatesBeforeWriting() async throws {
        let store = try MongoStore(
            options: .init(uri: try MongoTestServer.url(), database: "outbox_\(UUID().uuidString.prefix(8))", poolSize: 4, threads: 1))
        try await store.open()
        let writer = MongoOutboxWriter(store: store, outbox: "shop_\(UUID().uuidString.prefix(8)).outbox")
        await #expect(throws: RequestError.self) { try await writer.enqueue(topic: "bad topic", json: "1") }
        await #expect(throws: RequestError.self) { try await writer.enqueue(topic: "t", json: "1", id: String(repeating: "i", count: 201)) }
        await #expect(throws: RequestError.self) { try await writer.enqueue(topic: "t", key: String(repeating: "k", count: 1025), json: "1") }
        await #expect(throws: RequestError.self) {
            try await writer.enqueue(topic: "t", headers: [("h", String(repeating: "v", count: 4097))], json: "1")
        }
        await #expect(throws: RequestError.self) { try await writer.enqueue(topic: "t", headers: [("", "v")], json: "1") }
        let id = try await writer.enqueue(topic: "t", headers: [("h", "v")], json: "1")
        #expect(!id.isEmpty)
        await store.close()
    }

    /// A drain whose store never opened ends when cancelled (a broker whose store failed to
    /// open cancels its services); it once spun on the cancelled sleep and kept the broker alive.
    @Test func aCancelledDrainWaitingForItsStoreEnds() async throws {
        let store = try MongoStore(options: .init(uri: "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100", database: "x", poolSize: 1, threads: 1))
        let drain = OutboxDrain(outbox: "x.outbox", broker: Broker(store: SQLiteStore(location: .memory)), store: store)
        let running = Task { try await drain.run() }
        try await Task.sleep(for: .milliseconds(300))
        running.cancel()
        let outcomes = Collected()
        let decided = Latch()
        Task {
            _ = try? await running.value
            _ = outcomes.append("ended")
            decided.open()
        }
        Task {
            try? await Task.sleep(for: .seconds(10))
            _ = outcomes.append("still running 10 s after the cancel")
            decided.open()
        }
        await decided.wait()
        #expect(outcomes.frames.first == "ended")
        await store.close()
    }

    @Test func publishedDirectlyAndThroughTheOutboxReachAWebSocketSubscriber() async throws {
        let url = try MongoTestServer.url()
        let database = "direct_\(UUID().uuidString.prefix(8))"
        let store = try MongoStore(options: .init(uri: url, database: database, poolSize: 16, threads: 4))
        try await store.open()
        let publisher = DirectPublisher(store: store)
        // A topic with 3 partitions: the key decides, as for PUBLISH.
        try await store.putTopicConfig(TopicConfig(topic: "direct.orders", partitions: 3))
        let stored = try await publisher.publish(topic: "direct.orders", key: "cust-7", headers: [("source", "swift")], json: #"{"n":1}"#)
        #expect(stored.event.partition == Partitioner.partition(forKey: "cust-7", partitions: 3))
        #expect(stored.event.offset == 1)
        let outboxID = try await MongoOutboxWriter(store: store, outbox: "\(database).outbox")
            .enqueue(topic: "direct.orders", key: "cust-7", json: #"{"n":2}"#)

        let broker = try BrokerProcess(mongoURL: url, database: database, outbox: "\(database).outbox")
        defer { broker.stop() }
        try await broker.waitReady()

        let frames = try await Self.subscribeAndCollect(port: broker.port, topic: "direct.orders", count: 2)
        let messages = try frames.map { try RawJSON(validating: Array($0.utf8)).parsed() }
        #expect(messages.count == 2)
        #expect(messages.map { $0["envelope"]?["payload"] } == [.object([("n", .number(1, integer: 1))]), .object([("n", .number(2, integer: 2))])])
        #expect(messages[0]["envelope"]?["id"] == .string(stored.event.id))
        #expect(messages[0]["envelope"]?["headers"] == .object([("source", .string("swift"))]))
        #expect(messages[1]["envelope"]?["id"] == .string(outboxID), "the outbox row's _id becomes the event id")
        #expect(messages.allSatisfy { $0["partition"] == .number(Double(stored.event.partition), integer: Int64(stored.event.partition)) })
        await store.close()
    }

    /// Subscribes ephemerally from the earliest offset and returns the first `count` MESSAGE frames.
    static func subscribeAndCollect(port: Int, topic: String, count: Int) async throws -> [String] {
        let collected = Collected()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await WebSocketClient.connect(url: "ws://127.0.0.1:\(port)/ws", logger: Logger(label: "test.ws")) { inbound, outbound, _ in
                    try await outbound.write(.text(#"{"type":"SUBSCRIBE","topic":"\#(topic)","from":{"kind":"earliest"}}"#))
                    for try await message in inbound.messages(maxSize: 1 << 20) {
                        guard case .text(let text) = message, text.contains(#""type":"MESSAGE""#) else { continue }
                        if collected.append(text) >= count { break }
                    }
                    try await outbound.close(.normalClosure, reason: nil)
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(15))
                throw BrokerError(.unavailable, "no \(count) messages within 15 s")
            }
            try await group.next()
            group.cancelAll()
        }
        return collected.frames
    }
}

final class Collected: Sendable {
    private let state = Mutex<[String]>([])
    func append(_ frame: String) -> Int {
        state.withLock {
            $0.append(frame)
            return $0.count
        }
    }
    var frames: [String] { state.withLock { $0 } }
}

/// A real `stream-broker` process (the debug build) on a free port.
final class BrokerProcess: Sendable {
    let port: Int
    private let process: Process

    init(mongoURL: String, database: String, outbox: String?) throws {
        let binary = DirectPublisherTests.repo.appendingPathComponent(".build/debug/stream-broker")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw BrokerError(.unavailable, "build the broker first: \(binary.path) is missing")
        }
        port = Int.random(in: 20_000..<60_000)
        let process = Process()
        process.executableURL = binary
        var environment = ProcessInfo.processInfo.environment
        environment["MONGO_URL"] = mongoURL
        environment["MONGO_DB"] = database
        environment["BUS_HOST"] = "127.0.0.1"
        environment["BUS_PORT"] = String(port)
        environment["BUS_LOG_LEVEL"] = "warning"
        environment["BUS_LEASE_TTL_MS"] = "2000"
        if let outbox { environment["BUS_OUTBOX"] = outbox }
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.process = process
    }

    func waitReady() async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if Self.httpStatus(port: port, path: "/readyz") == 200 { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw BrokerError(.unavailable, "the broker did not become ready")
    }

    /// A minimal blocking HTTP GET on loopback (test helper; FoundationNetworking is not linked).
    static func httpStatus(port: Int, path: String) -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, 0) == request.count else { return nil }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = recv(fd, &buffer, buffer.count, 0)
        guard count > 12 else { return nil }
        return Int(String(decoding: buffer[9..<12], as: UTF8.self))
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}
