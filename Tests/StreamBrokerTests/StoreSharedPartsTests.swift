import Foundation
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// The parts every store shares: ids, the append plan, the group-commit thread.
@Suite("Store shared parts")
struct StoreSharedPartsTests {
    func request(_ topic: String, partition: Int = 0, id: String, fromClient: Bool = true) -> AppendRequest {
        AppendRequest(
            topic: topic, partition: partition, id: id, key: nil, headers: nil, payload: RawJSON(trusted: Array("1".utf8)), idFromClient: fromClient)
    }

    /// Starts `thread` with `record` for every batch; the first batch (`[0]`) holds the thread
    /// until `gate` is signalled, so that the next jobs queue up behind it. `entered` returns
    /// once the thread holds.
    func startHoldingFirstBatch(
        _ thread: GroupCommitThread<Int>, record: @escaping @Sendable ([Int], UInt64) -> Void
    ) -> (entered: () async -> Void, gate: DispatchSemaphore) {
        let (entered, enter) = AsyncStream<Void>.makeStream()
        let gate = DispatchSemaphore(value: 0)
        thread.start { batch, queuedAt in
            if batch == [0] {
                enter.yield()
                gate.wait()
            }
            record(batch, queuedAt)
        }
        return ({ for await _ in entered { return } }, gate)
    }

    @Test func keysAreSpelledAsTheSpecSays() {
        #expect(StoreKey.counter(topic: "orders", partition: 2).id == "orders:2")
        #expect(StoreKey.groupPartition(topic: "orders", partition: 2, group: "billing").id == "orders:2:billing")
        #expect(StoreKey.attempt(topic: "orders", partition: 2, group: "billing", offset: 42).id == "orders:2:billing:42")
        #expect(StoreKey.member(topic: "orders", group: "billing", replica: "host:7070").id == "orders:billing:host:7070")
        #expect(StoreKey.job("outbox:app.outbox").id == "job:outbox:app.outbox")
        #expect(LeaseID.partition(topic: "orders", partition: 2, group: "billing") == "orders:2:billing")
        #expect(LeaseID.job("retention:orders") == "job:retention:orders")
    }

    @Test func planReservesPerPartitionAndAnswersDuplicates() throws {
        let stored = Event(topic: "a", partition: 0, offset: 7, id: "old", ts: 1, key: nil, headers: nil, payload: RawJSON(trusted: Array("0".utf8)))
        let requests = [
            request("a", id: "old"), request("a", id: "x"), request("a", partition: 1, id: "y"), request("a", id: "x"),
            request("b", id: "old"), request("a", id: "z", fromClient: false),
        ]
        #expect(AppendPlan.idsToLookUp(requests).map(\.topic) == ["a", "b"])
        #expect(AppendPlan.idsToLookUp(requests)[0].ids == ["old", "x", "y", "x"])
        let plan = AppendPlan(requests, stored: [stored])
        #expect(plan.fresh == [1, 2, 4, 5])
        #expect(
            plan.reservations.map(\.counter) == [
                .counter(topic: "a", partition: 0), .counter(topic: "a", partition: 1), .counter(topic: "b", partition: 0),
            ])
        #expect(plan.reservations.map(\.count) == [2, 1, 1])
        let events = plan.events(
            firstOffsets: [.counter(topic: "a", partition: 0): 10, .counter(topic: "a", partition: 1): 1, .counter(topic: "b", partition: 0): 3],
            ts: 5)
        #expect(events.map(\.offset) == [10, 1, 3, 11])
        let results = try plan.results(inserted: events)
        #expect(results.map(\.duplicate) == [true, false, false, true, false, false])
        #expect(results.map(\.event.offset) == [7, 10, 1, 10, 3, 11])
    }

    @Test func planAnswersALostRaceWithTheWinner() throws {
        let plan = AppendPlan([request("a", id: "x"), request("a", id: "x")], stored: [])
        let events = plan.events(firstOffsets: [.counter(topic: "a", partition: 0): 5], ts: 1)
        let winner = Event(topic: "a", partition: 0, offset: 4, id: "x", ts: 0, key: nil, headers: nil, payload: RawJSON(trusted: Array("2".utf8)))
        let results = try plan.results(inserted: events, lostRaces: [0: winner])
        #expect(results.map(\.event.offset) == [4, 4])
        #expect(results.map(\.duplicate) == [true, true])
    }

    @Test func groupCommitThreadBatchesWhatQueuesWhileItWorks() async throws {
        let thread = GroupCommitThread<Int>(name: "test-group-commit")
        let batches = Mutex<[[Int]]>([])
        let held = startHoldingFirstBatch(thread) { batch, _ in batches.withLock { $0.append(batch) } }
        #expect(thread.submit(0))
        await held.entered()
        for job in 1...3 { #expect(thread.submit(job)) }
        held.gate.signal()
        let leftover = await thread.stop()
        #expect(leftover.isEmpty)
        #expect(batches.withLock { $0 } == [[0], [1, 2, 3]], "jobs queued during a batch run together, after it")
        #expect(!thread.submit(4), "a stopped thread takes no more jobs")
    }

    @Test func groupCommitThreadTellsWhenEachBatchsOldestJobWasQueued() async throws {
        let thread = GroupCommitThread<Int>(name: "test-queued-at")
        let seen = Mutex<[(batch: [Int], queuedAt: UInt64, ranAt: UInt64)]>([])
        let held = startHoldingFirstBatch(thread) { batch, queuedAt in seen.withLock { $0.append((batch, queuedAt, MonotonicTime.now())) } }
        let beforeFirst = MonotonicTime.now()
        #expect(thread.submit(0))
        await held.entered()
        let beforeSecond = MonotonicTime.now()
        #expect(thread.submit(1))
        let afterOldest = MonotonicTime.now()
        for job in 2...3 { #expect(thread.submit(job)) }
        held.gate.signal()
        await thread.stop()
        let batches = seen.withLock { $0 }
        try #require(batches.map(\.batch) == [[0], [1, 2, 3]])
        #expect(batches[0].queuedAt >= beforeFirst && batches[0].queuedAt <= beforeSecond)
        // The second batch's time is its first job's (the later ones leave it alone).
        #expect(batches[1].queuedAt >= beforeSecond && batches[1].queuedAt <= afterOldest)
        #expect(batches.allSatisfy { $0.queuedAt <= $0.ranAt })
    }

    @Test func groupCommitThreadNeverStartedHandsBackItsJobs() async {
        let thread = GroupCommitThread<Int>(name: "test-never-started")
        #expect(thread.submit(1))
        #expect(await thread.stop() == [1])
        #expect(!thread.submit(2))
    }
}

/// The MongoDB client as the store uses it (the double, or `MONGO_URL`).
@Suite("MongoDB client", .timeLimit(.minutes(1)))
struct MongoClientTests {
    func openStore() async throws -> MongoStore {
        let store = try MongoStore(
            options: .init(uri: try MongoTestServer.url(), database: "client_\(UUID().uuidString.prefix(8))", poolSize: 8, threads: 2, awaitMs: 200))
        try await store.open()
        return store
    }

    @Test func writeErrorsThrowUnlessTheCallerReadsThem() async throws {
        let store = try await openStore()
        let insert = MongoCommand.insert("things", documents: [Array(#"{"_id":"a"}"#.utf8)])
        _ = try await store.run { client in try client.command(insert) }
        let error = await #expect(throws: BrokerError.self) { _ = try await store.run { client in try client.command(insert) } }
        #expect(error?.code == .unavailable)
        #expect(error?.isDuplicateKey == true)
        let reply = try await store.run { client in try client.command(insert, writeErrors: .return) }
        #expect(MongoJSON.integer(MongoJSON.array(reply["writeErrors"]).first?["code"]) == 11000)
        await store.close()
    }

    @Test func insertDoorbellRingsOnAnInsertIntoAnotherDatabase() async throws {
        let store = try await openStore()
        let database = "doorbell_\(UUID().uuidString.prefix(8))"
        let (rings, ring) = AsyncStream<Void>.makeStream()
        let tail = store.watchInserts(database: database, collection: "outbox") { ring.yield() }
        var iterator = rings.makeAsyncIterator()
        await iterator.next()  // the stream is open
        let insert = MongoCommand.insert("outbox", documents: [Array(#"{"_id":"row","topic":"t","payload":1}"#.utf8)])
        _ = try await store.run { client in try client.command(insert, database: database) }
        await iterator.next()  // the insert
        tail.stop()
        await store.close()
    }
}
