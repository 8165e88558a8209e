import Foundation
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// Appends that share one group commit: failures, retries, counters and the change feed.
@Suite("SQLite store batches")
struct SQLiteStoreBatchTests {
    enum Location: String, CaseIterable {
        case memory
        case file
    }

    private func request(_ topic: String, partition: Int = 0, id: String = UUID().uuidString, fromClient: Bool = false) -> AppendRequest {
        AppendRequest(
            topic: topic, partition: partition, id: id, key: nil, headers: nil, payload: RawJSON(trusted: Array("{}".utf8)),
            idFromClient: fromClient)
    }

    private func makeStore(_ location: Location, directory: String? = nil) -> SQLiteStore {
        switch location {
        case .memory: SQLiteStore(location: .memory)
        case .file:
            SQLiteStore(
                location: .file(
                    directory: directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("sb-batch-\(UUID().uuidString)").path))
        }
    }

    /// Holds the writer inside a job while `submit` queues work, so that it runs as one batch.
    private func asOneBatch(_ store: SQLiteStore, _ submit: () -> Void) async {
        let (entered, enter) = AsyncStream<Void>.makeStream()
        let release = DispatchSemaphore(value: 0)
        store.writer.submit(
            store.writer.makeJob(
                { _ in
                    enter.yield()
                    release.wait()
                }, completion: { _ in }))
        var iterator = entered.makeAsyncIterator()
        await iterator.next()
        submit()
        release.signal()
    }

    private final class Results: Sendable {
        let byName = Mutex<[String: Result<[AppendResult], any Error>]>([:])
        let (stream, continuation) = AsyncStream<Void>.makeStream()

        func completion(_ name: String) -> @Sendable (Result<[AppendResult], any Error>) -> Void {
            { result in
                self.byName.withLock { $0[name] = result }
                self.continuation.yield()
            }
        }

        func wait(for count: Int) async {
            var iterator = stream.makeAsyncIterator()
            while byName.withLock({ $0.count }) < count { await iterator.next() }
        }

        func offsets(_ name: String) -> [Int64]? {
            if case .success(let results) = byName.withLock({ $0[name] }) { results.map(\.event.offset) } else { nil }
        }

        func failed(_ name: String) -> Bool {
            if case .failure = byName.withLock({ $0[name] }) { true } else { false }
        }
    }

    private func storedCounter(_ store: SQLiteStore, _ id: String) async throws -> Int64? {
        try await store.write { db in
            var next: Int64?
            try db.query("SELECT next_offset FROM counters WHERE id = ?", [.text(id)]) { next = $0.int(0) }
            return next
        }
    }

    @Test(arguments: Location.allCases)
    func aFailingPublishDoesNotFailTheOthersInItsBatch(location: Location) async throws {
        let store = makeStore(location)
        try await store.open()
        // A row where the third offset of partition 0 will go: an append reaching it fails.
        try await store.write { db in
            try db.run("INSERT INTO events(topic, partition, offset, id, ts, payload) VALUES ('t', 0, 3, 'squatter', 0, x'7b7d')")
        }
        let feed = store.changes(topic: "t")
        var watcher = feed.makeAsyncIterator()
        #expect(await watcher.next() == [])
        let results = Results()
        await asOneBatch(store) {
            store.append([request("t")], completion: results.completion("a"))
            // Inserts offset 2, then fails on 3 after changing a row: the batch is rolled back.
            store.append([request("t"), request("t")], completion: results.completion("bad"))
            store.append([request("t")], completion: results.completion("b"))
            store.append([request("t", partition: 1)], completion: results.completion("c"))
        }
        await results.wait(for: 4)
        #expect(results.offsets("a") == [1])
        #expect(results.failed("bad"))
        #expect(results.offsets("b") == [2], "retried alone after the bad one, which reserved nothing")
        #expect(results.offsets("c") == [1])
        #expect(try await store.highWatermarks(topic: "t", partitions: 2) == [2, 1])
        #expect(try await storedCounter(store, "t:0") == 3)
        #expect(try await storedCounter(store, "t:1") == 2)
        let stored = try await store.read(topic: "t", partition: 0, from: 1, limit: 10)
        #expect(stored.map(\.offset) == [1, 2, 3])
        #expect(stored.last?.id == "squatter")
        // The feed carries what was committed, once, and nothing of the rolled-back attempt.
        var seen: [String] = []
        while seen.count < 3, let batch = await watcher.next() { seen += batch.map { "\($0.partition):\($0.offset)" } }
        #expect(seen == ["0:1", "0:2", "1:1"])
        await store.close()
    }

    @Test(arguments: Location.allCases)
    func aPublishRefusedBeforeItChangedARowFailsAloneAndTheBatchCommits(location: Location) async throws {
        let store = makeStore(location)
        try await store.open()
        try await store.write { db in
            try db.run("INSERT INTO events(topic, partition, offset, id, ts, payload) VALUES ('t', 0, 2, 'squatter', 0, x'7b7d')")
        }
        let results = Results()
        await asOneBatch(store) {
            store.append([request("t")], completion: results.completion("a"))
            store.append([request("t")], completion: results.completion("bad"))  // offset 2 is taken
            store.append([request("t", partition: 1)], completion: results.completion("b"))
        }
        await results.wait(for: 3)
        #expect(results.offsets("a") == [1])
        #expect(results.failed("bad"))
        #expect(results.offsets("b") == [1])
        #expect(try await store.highWatermarks(topic: "t", partitions: 2) == [1, 1])
        #expect(try await storedCounter(store, "t:0") == 2)
        await store.close()
    }

    @Test(arguments: Location.allCases)
    func countersAreWrittenOncePerBatchAndRightAfterIt(location: Location) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sb-batch-\(UUID().uuidString)").path
        let store = makeStore(location, directory: directory)
        try await store.open()
        let results = Results()
        let feed = store.changes(topic: "t")
        var watcher = feed.makeAsyncIterator()
        #expect(await watcher.next() == [])
        await asOneBatch(store) {
            for n in 0..<30 { store.append([request("t", partition: n % 3)], completion: results.completion("\(n)")) }
            store.append(
                [request("t", id: "x", fromClient: true), request("t", id: "x", fromClient: true), request("t", partition: 2)],
                completion: results.completion("mixed"))
        }
        await results.wait(for: 31)
        let offsets: [Int64] = (0..<30).map { n in results.offsets("\(n)")?.first ?? 0 }
        let expected: [Int64] = (0..<30).map { n in Int64(n / 3 + 1) }
        #expect(offsets == expected)
        #expect(results.offsets("mixed") == [11, 11, 11])
        #expect(try await store.highWatermarks(topic: "t", partitions: 4) == [11, 10, 11, 0])
        #expect(try await storedCounter(store, "t:0") == 12)
        #expect(try await storedCounter(store, "t:2") == 12)
        #expect(try await storedCounter(store, "t:3") == nil)
        // The whole batch reaches a watcher in one wake-up.
        #expect(await watcher.next()?.count == 32)
        await store.close()
        if location == .file {
            let reopened = makeStore(.file, directory: directory)
            try await reopened.open()
            #expect(try await reopened.highWatermarks(topic: "t", partitions: 3) == [11, 10, 11])
            #expect(try await reopened.append([request("t", partition: 1)])[0].event.offset == 11)
            await reopened.close()
        }
    }

    @Test(arguments: Location.allCases)
    func aRepeatedPublisherIDInOneBatchIsADuplicateOfTheFirst(location: Location) async throws {
        let store = makeStore(location)
        try await store.open()
        let earlier = try await store.append([request("t", id: "old", fromClient: true)])[0].event
        let results = Results()
        await asOneBatch(store) {
            store.append([request("t", id: "new", fromClient: true)], completion: results.completion("first"))
            store.append([request("t", id: "new", fromClient: true)], completion: results.completion("again"))
            store.append([request("t", id: "old", fromClient: true)], completion: results.completion("old"))
            store.append([request("t")], completion: results.completion("next"))
        }
        await results.wait(for: 4)
        let answers = results.byName.withLock { $0.mapValues { try? $0.get()[0] } }
        #expect(answers["first"]??.event.offset == 2 && answers["first"]??.duplicate == false)
        #expect(answers["again"]??.event == answers["first"]??.event && answers["again"]??.duplicate == true)
        #expect(answers["old"]??.event == earlier && answers["old"]??.duplicate == true)
        #expect(answers["next"]??.event.offset == 3, "a duplicate reserves no offset")
        #expect(try await store.highWatermarks(topic: "t", partitions: 1) == [3])
        await store.close()
    }
}
