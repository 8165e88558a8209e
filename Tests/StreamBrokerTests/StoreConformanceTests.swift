import Foundation
import Logging
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// The store contract, run unchanged against every store.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case sqliteMemory
    case sqliteFile
    case mongo

    var testDescription: String { rawValue }

    func make(clock: @escaping @Sendable () -> Int64, logger: Logger = Logger(label: "test.store")) throws -> any EventStore {
        switch self {
        case .mongo:
            let database = "conformance_\(UUID().uuidString.prefix(8))"
            // The database in the URI's path and none given explicitly, as users often configure it.
            return try MongoStore(
                options: .init(uri: try MongoTestServer.url(database: database), poolSize: 16, threads: 4), logger: logger, clock: clock)
        case .sqliteMemory:
            return SQLiteStore(location: .memory, logger: logger, clock: clock)
        case .sqliteFile:
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sb-store-\(UUID().uuidString)").path
            return SQLiteStore(location: .file(directory: dir), logger: logger, clock: clock)
        }
    }

    /// Stores a topic config row as it is, bypassing validation (as a hand edit or a newer
    /// broker would).
    static func storeRawConfig(_ store: any EventStore, topic: String, json: String) async throws {
        switch store {
        case let sqlite as SQLiteStore:
            try await sqlite.write { db in
                try db.run("INSERT INTO topic_configs(topic, config) VALUES (?, ?)", [.text(topic), .blob(Array(json.utf8))])
            }
        case let mongo as MongoStore:
            let command = Array(#"{"insert":"topic_configs","documents":[\#(json)]}"#.utf8)
            _ = try await mongo.run { client in try client.command(command) }
        default:
            Issue.record("unknown store")
        }
    }
}

final class TestClock: Sendable {
    let value = Atomic<Int64>(1_000)
    var now: Int64 { value.load(ordering: .relaxed) }
    func advance(_ ms: Int64) { value.add(ms, ordering: .relaxed) }
}

@Suite("Store conformance")
struct StoreConformanceTests {
    func request(
        _ topic: String, partition: Int = 0, id: String = UUID().uuidString, key: String? = nil, payload: String = "{\"n\":1}",
        fromClient: Bool = false
    )
        -> AppendRequest
    {
        AppendRequest(
            topic: topic, partition: partition, id: id, key: key, headers: Headers([("h", "v")]),
            payload: RawJSON(trusted: Array(payload.utf8)), idFromClient: fromClient)
    }

    func withStore(
        _ kind: StoreKind, logger: Logger = Logger(label: "test.store"), _ body: (any EventStore, TestClock) async throws -> Void
    ) async throws {
        let clock = TestClock()
        let store = try kind.make(clock: { clock.now }, logger: logger)
        try await store.open()
        #expect(await store.isReady())
        do {
            try await body(store, clock)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func appendAssignsOffsetsPerPartitionFromOne(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let results = try await store.append([request("a"), request("a", partition: 1), request("a"), request("b")])
            #expect(results.map(\.event.offset) == [1, 1, 2, 1])
            #expect(results.allSatisfy { !$0.duplicate })
            #expect(try await store.highWatermarks(topic: "a", partitions: 3) == [2, 1, 0])
            let more = try await store.append([request("a")])
            #expect(more[0].event.offset == 3)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func readsByOffsetAndTimestamp(kind: StoreKind) async throws {
        try await withStore(kind) { store, clock in
            _ = try await store.append([request("t", payload: "[1]"), request("t", payload: "\"two\"")])
            clock.advance(1000)
            _ = try await store.append([request("t", key: "k", payload: "{\"x\": 3}")])
            let events = try await store.read(topic: "t", partition: 0, from: 2, limit: 10)
            #expect(events.map(\.offset) == [2, 3])
            #expect(try events[0].payload.parsed() == .string("two"))
            #expect(try events[1].payload.parsed() == .object([("x", .number(3, integer: 3))]))
            #expect(events[1].key == "k")
            #expect(events[1].headers == Headers([("h", "v")]))
            #expect(try await store.read(topic: "t", partition: 0, from: 1, limit: 1).map(\.offset) == [1])
            #expect(try await store.firstOffset(topic: "t", partition: 0, atOrAfter: 1_500) == 3)
            #expect(try await store.firstOffset(topic: "t", partition: 0, atOrAfter: 0) == 1)
            #expect(try await store.firstOffset(topic: "t", partition: 0, atOrAfter: 99_999) == nil)
            #expect(try await store.lowestOffset(topic: "t", partition: 0) == 1)
            #expect(try await store.lowestOffset(topic: "t", partition: 1) == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func retentionDeletesOldEventsOfOneTopic(kind: StoreKind) async throws {
        try await withStore(kind) { store, clock in
            _ = try await store.append([request("r"), request("r"), request("keep")])
            clock.advance(5_000)
            _ = try await store.append([request("r")])
            #expect(try await store.deleteEvents(topic: "r", olderThan: clock.now - 1_000) == 2)
            #expect(try await store.read(topic: "r", partition: 0, from: 1, limit: 10).map(\.offset) == [3])
            #expect(try await store.lowestOffset(topic: "r", partition: 0) == 3)
            #expect(try await store.highWatermarks(topic: "r", partitions: 1) == [3], "offsets continue after retention")
            #expect(try await store.read(topic: "keep", partition: 0, from: 1, limit: 10).count == 1)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func idempotentByTopicAndID(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let first = try await store.append([request("t", id: "same", fromClient: true)])
            let again = try await store.append([
                request("t", id: "same", payload: "2", fromClient: true), request("t", id: "other", fromClient: true),
            ])
            #expect(again[0].duplicate && again[0].event.offset == first[0].event.offset)
            #expect(again[0].event.payload.string == "{\"n\":1}")
            #expect(again[1].event.offset == 2)
            // The same id on another topic is another event.
            #expect(try await store.append([request("u", id: "same", fromClient: true)])[0].duplicate == false)
            // Within one batch too.
            let batch = try await store.append([request("v", id: "d", fromClient: true), request("v", id: "d", fromClient: true)])
            #expect(batch.map(\.duplicate) == [false, true])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func groupPositionsAndFencing(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            #expect(try await store.positions(topic: "t", group: "g").isEmpty)
            try await store.commit(topic: "t", partition: 0, group: "g", lastCommitted: 5, epoch: 0)
            try await store.commit(topic: "t", partition: 1, group: "g", lastCommitted: 2, epoch: 0)
            try await store.commit(topic: "t", partition: 0, group: "h", lastCommitted: 1, epoch: 0)
            #expect(try await store.positions(topic: "t", group: "g").map(\.lastCommitted) == [5, 2])
            #expect(try await store.allPositions(topic: "t").count == 3)
            await #expect(throws: BrokerError.self) {
                try await store.commit(topic: "t", partition: 0, group: "g", lastCommitted: 9, epoch: 7)
            }
            #expect(try await store.positions(topic: "t", group: "g")[0].lastCommitted == 5)
            // A reset may move the watermark backwards.
            try await store.commit(topic: "t", partition: 0, group: "g", lastCommitted: 0, epoch: 0)
            #expect(try await store.positions(topic: "t", group: "g")[0].lastCommitted == 0)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func attemptsPersist(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            try await store.setAttempts(topic: "t", partition: 0, group: "g", offset: 3, attempts: 1, reason: "x")
            try await store.setAttempts(topic: "t", partition: 0, group: "g", offset: 3, attempts: 2, reason: "y")
            try await store.setAttempts(topic: "t", partition: 0, group: "g", offset: 7, attempts: 1, reason: nil)
            #expect(try await store.attempts(topic: "t", partition: 0, group: "g", above: 0) == [3: 2, 7: 1])
            #expect(try await store.attempts(topic: "t", partition: 0, group: "g", above: 3) == [7: 1])
            try await store.clearAttempts(topic: "t", partition: 0, group: "g", upTo: 5)
            #expect(try await store.attempts(topic: "t", partition: 0, group: "g", above: 0) == [7: 1])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func topicConfigs(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let config = TopicConfig(topic: "t", partitions: 4, maxAttempts: 3, ackTimeoutMs: 500, redeliveryBackoffMs: [10, 20])
            try await store.putTopicConfig(config)
            try await store.putTopicConfig(TopicConfig(topic: "a"))
            #expect(try await store.topicConfigs() == [TopicConfig(topic: "a"), config])
            // ensure keeps what another writer stored first.
            #expect(try await store.ensureTopicConfig(TopicConfig(topic: "t")) == config)
            #expect(try await store.ensureTopicConfig(TopicConfig(topic: "new", partitions: 2)) == TopicConfig(topic: "new", partitions: 2))
            #expect(try await store.topicConfigs().count == 3)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func configRowsThatDoNotDecodeAreLoggedAndSkipped(kind: StoreKind) async throws {
        let logs = LogCapture()
        try await withStore(kind, logger: logs.logger) { store, _ in
            try await store.putTopicConfig(TopicConfig(topic: "good", partitions: 2))
            try await StoreKind.storeRawConfig(store, topic: "bad", json: #"{"topic":"bad","partitions":"many"}"#)
            #expect(try await store.topicConfigs() == [TopicConfig(topic: "good", partitions: 2)])
            let warnings = logs.records.filter { $0.level == .warning && $0.metadata["topic"] == "bad" }
            #expect(warnings.count == 1)
            #expect(warnings.first.map { "\($0.metadata["reason"] ?? "")".contains("partitions") } == true)
            // ensure answers with the config it was given rather than failing.
            #expect(try await store.ensureTopicConfig(TopicConfig(topic: "bad", partitions: 3)) == TopicConfig(topic: "bad", partitions: 3))
            // Configs are re-read every BUS_POLL_MS: the same row is reported once as a warning.
            #expect(try await store.topicConfigs().count == 1)
            let reports = logs.records.filter { $0.metadata["topic"] == "bad" }
            #expect(reports.map(\.level) == [.warning, .debug, .debug])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func requestsMadeBeforeOpenWaitForIt(kind: StoreKind) async throws {
        let store = try kind.make(clock: { 1 })
        let (answers, answer) = AsyncStream<Result<[AppendResult], any Error>>.makeStream()
        store.append([request("t")]) { answer.yield($0) }
        try await store.open()
        var iterator = answers.makeAsyncIterator()
        let early = await iterator.next()
        #expect(try early?.get().map(\.event.offset) == [1])
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func appendBeforeOpenOrAfterCloseFailsAsUnavailable(kind: StoreKind) async throws {
        let store = try kind.make(clock: { 1 })
        // Never opened: closing does not hang, and an append submitted before is answered.
        let (answers, answer) = AsyncStream<Result<[AppendResult], any Error>>.makeStream()
        store.append([request("t")]) { answer.yield($0) }
        await store.close()
        var iterator = answers.makeAsyncIterator()
        let early = await iterator.next()
        #expect(throws: BrokerError.self) { try early?.get() }
        await #expect(throws: BrokerError.self) { try await store.append([request("t")]) }
    }

    @Test(arguments: StoreKind.allCases)
    func changeFeedWakesWatchersOfTheTopic(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let changes = store.changes(topic: "t")
            var iterator = changes.makeAsyncIterator()
            // The feed says it is open with an empty batch; only then is every append seen.
            #expect(await iterator.next() == [])
            _ = try await store.append([request("other"), request("t"), request("t", id: "dup", fromClient: true)])
            _ = try await store.append([request("t", id: "dup", fromClient: true)])
            _ = try await store.append([request("t")])
            var batches: [[Int64]] = []
            while batches.flatMap({ $0 }).count < 3, let batch = await iterator.next() {
                if !batch.isEmpty { batches.append(batch.map(\.offset)) }
            }
            #expect(batches.flatMap { $0 } == [1, 2, 3], "a duplicate publish stores nothing and wakes nobody; other topics are not seen")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func payloadsKeepTheirJSONValue(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let payloads = [
                #"{"n":1,"big":12345678901,"f":1.5,"s":"é\"\n","a":[1,"x",null,true,{}]}"#, "[]", "\"text\"", "42", "-0.25", "null", "true",
            ]
            _ = try await store.append(payloads.map { request("p", payload: $0) })
            let events = try await store.read(topic: "p", partition: 0, from: 1, limit: 10)
            #expect(try events.map { try $0.payload.parsed() } == payloads.map { try RawJSON(validating: Array($0.utf8)).parsed() })
        }
    }

    @Test func fileStoreSurvivesReopen() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sb-reopen-\(UUID().uuidString)").path
        let store = SQLiteStore(location: .file(directory: dir))
        try await store.open()
        _ = try await store.append([request("t"), request("t")])
        try await store.commit(topic: "t", partition: 0, group: "g", lastCommitted: 1, epoch: 0)
        await store.close()
        await #expect(throws: BrokerError.self) { try await store.read(topic: "t", partition: 0, from: 1, limit: 1) }
        let reopened = SQLiteStore(location: .file(directory: dir))
        try await reopened.open()
        #expect(try await reopened.append([request("t")])[0].event.offset == 3)
        #expect(try await reopened.positions(topic: "t", group: "g")[0].lastCommitted == 1)
        await reopened.close()
    }

    @Test func badDataDirectoryIsAClearError() async {
        let store = SQLiteStore(location: .file(directory: "/proc/streambroker-cannot-create"))
        await #expect(throws: BrokerError.self) { try await store.open() }
    }

    @Test func sqliteOpenFailureFailsLaterRequestsUntilClosed() async throws {
        let store = SQLiteStore(location: .file(directory: "/proc/streambroker-cannot-create"))
        await #expect(throws: BrokerError.self) { try await store.open() }
        await #expect(throws: BrokerError.self) { try await store.read(topic: "t", partition: 0, from: 1, limit: 1) }
        await store.close()
    }
}

/// Keeps what a logger logs, for tests.
final class LogCapture: Sendable {
    struct Record: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: Logger.Metadata
    }

    private let stored = Mutex<[Record]>([])

    var records: [Record] { stored.withLock { $0 } }

    var logger: Logger {
        var logger = Logger(label: "test.capture") { _ in Handler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let record = Record(level: event.level, message: event.message.description, metadata: metadata.merging(event.metadata ?? [:]) { $1 })
            capture.stored.withLock { $0.append(record) }
        }
    }
}
