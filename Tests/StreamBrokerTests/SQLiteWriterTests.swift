import CSQLite
import Foundation
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// Holds a worker's thread inside a job until released, so that what is submitted meanwhile
/// runs after it as one batch (one transaction).
private final class WriterGate: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)

    func hold(_ worker: SQLiteWorker) async {
        let (entered, enter) = AsyncStream<Void>.makeStream()
        worker.submit(
            worker.makeJob(
                { _ in
                    enter.yield()
                    self.semaphore.wait()
                }, completion: { _ in }))
        var iterator = entered.makeAsyncIterator()
        await iterator.next()
    }

    func release() { semaphore.signal() }
}

/// Collects the completions of submitted jobs, by name.
private final class Outcomes: Sendable {
    private let results = Mutex<[String: Result<String, BrokerError>]>([:])
    private let runs = Mutex<[String: Int]>([:])
    private let (stream, continuation) = AsyncStream<Void>.makeStream()

    /// Submits `body` to `worker` without waiting; counts how often it runs.
    func submit(_ name: String, to worker: SQLiteWorker, _ body: @escaping (SQLiteConnection) throws -> Void) {
        worker.submit(
            worker.makeJob(
                { [self] db in
                    runs.withLock { $0[name, default: 0] += 1 }
                    try body(db)
                    return name
                },
                completion: { [self] result in
                    results.withLock { $0[name] = result.mapError { ($0 as? BrokerError) ?? BrokerError(.internal, "\($0)") } }
                    continuation.yield()
                }))
    }

    /// Waits until `count` jobs completed.
    func wait(for count: Int) async {
        var iterator = stream.makeAsyncIterator()
        while results.withLock({ $0.count }) < count { await iterator.next() }
    }

    func succeeded(_ name: String) -> Bool {
        if case .success = results.withLock({ $0[name] }) { true } else { false }
    }

    func error(_ name: String) -> BrokerError? {
        if case .failure(let error) = results.withLock({ $0[name] }) { error } else { nil }
    }

    func runs(_ name: String) -> Int { runs.withLock { $0[name, default: 0] } }
}

/// Counts the transaction hooks' calls; `beforeCommit` can be made to fail.
private final class HookLog: Sendable {
    let beforeCommits = Atomic<Int>(0)
    let commits = Atomic<Int>(0)
    let rollbacks = Atomic<Int>(0)
    /// `beforeCommit` throws while the transaction holds a row `t.v = 1`.
    let failWithRowOne: Bool

    init(failWithRowOne: Bool = false) {
        self.failWithRowOne = failWithRowOne
    }

    var hooks: SQLiteWorker.Hooks {
        .init(
            beforeCommit: { [self] db in
                beforeCommits.add(1, ordering: .relaxed)
                guard failWithRowOne else { return }
                var rowOne = false
                try db.query("SELECT 1 FROM t WHERE v = 1") { _ in rowOne = true }
                if rowOne { throw BrokerError(.unavailable, "before-commit failed") }
            },
            afterCommit: { [self] _ in commits.add(1, ordering: .relaxed) },
            afterRollback: { [self] in rollbacks.add(1, ordering: .relaxed) })
    }
}

@Suite("SQLite writer")
struct SQLiteWriterTests {
    private func tempPath() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sb-writer-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent("test.sqlite3").path
    }

    /// A writer on a file with table `t(v INTEGER PRIMARY KEY)`.
    private func openWriter(path: String, hooks: SQLiteWorker.Hooks) async throws -> SQLiteWorker {
        let worker = SQLiteWorker(name: "test-writer", transactional: true, hooks: hooks)
        try await worker.open {
            let db = try SQLiteConnection(path: path)
            try db.execute("PRAGMA journal_mode=WAL")
            try db.execute("PRAGMA foreign_keys=ON")
            try db.execute(
                """
                CREATE TABLE IF NOT EXISTS t(v INTEGER PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS child(parent INTEGER REFERENCES t(v) DEFERRABLE INITIALLY DEFERRED);
                """)
            return db
        }
        return worker
    }

    private func values(_ worker: SQLiteWorker) async throws -> [Int64] {
        try await worker.perform { db in
            var values: [Int64] = []
            try db.query("SELECT v FROM t ORDER BY v") { values.append($0.int(0)) }
            return values
        }
    }

    @Test func sqliteKeepsNoMemoryStatistics() throws {
        let db = try SQLiteConnection(path: tempPath())
        try db.execute("CREATE TABLE t(v TEXT); INSERT INTO t VALUES (hex(randomblob(1000)))")
        #expect(SQLiteConnection.isLibraryConfigured)
        // Counted only with statistics on (each allocation then takes SQLite's global mutex);
        // the connection stays open meanwhile, so that its memory would be counted.
        withExtendedLifetime(db) { #expect(sqlite3_memory_used() == 0) }
    }

    @Test func aBatchCommitsOnceWithoutRetries() async throws {
        let log = HookLog()
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        let committedBefore = log.commits.load(ordering: .relaxed)
        for v in 1...5 { outcomes.submit("\(v)", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (?)", [.int(Int64(v))]) } }
        gate.release()
        await outcomes.wait(for: 5)
        #expect((1...5).allSatisfy { outcomes.succeeded("\($0)") && outcomes.runs("\($0)") == 1 })
        #expect(log.commits.load(ordering: .relaxed) - committedBefore == 2, "the gate's transaction and the batch's")
        #expect(log.rollbacks.load(ordering: .relaxed) == 0)
        #expect(try await values(worker) == [1, 2, 3, 4, 5])
        await worker.stop()
    }

    @Test func aJobThatFailsAfterChangingRowsIsRetriedAloneAndTheOthersCommit() async throws {
        let log = HookLog()
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        _ = try await worker.perform { db in try db.run("INSERT INTO t(v) VALUES (100)") }
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        // Changes a row, then hits the primary key: the whole batch is rolled back.
        outcomes.submit("bad", to: worker) { db in
            try db.run("INSERT INTO t(v) VALUES (2)")
            try db.run("INSERT INTO t(v) VALUES (100)")
        }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (3)") }
        gate.release()
        await outcomes.wait(for: 3)
        #expect(outcomes.succeeded("a") && outcomes.succeeded("b"))
        #expect(outcomes.error("bad")?.message.contains("UNIQUE") == true)
        #expect(outcomes.runs("a") == 2 && outcomes.runs("bad") == 2, "the batch ran again job by job")
        #expect(outcomes.runs("b") == 1, "the batch stopped at the bad job")
        #expect(log.rollbacks.load(ordering: .relaxed) == 2, "the batch's, then the bad job's own")
        #expect(try await values(worker) == [1, 3, 100], "nothing of the bad job stays")
        await worker.stop()
    }

    @Test func aJobThatFailsWithoutChangingRowsFailsAloneWithoutARetry() async throws {
        let log = HookLog()
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        _ = try await worker.perform { db in try db.run("INSERT INTO t(v) VALUES (100)") }
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        // A refused statement undoes itself; a refusal before any write (a fenced commit) too.
        outcomes.submit("conflict", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (100)") }
        outcomes.submit("fenced", to: worker) { _ in throw BrokerError(.fenced, "stale epoch") }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (2)") }
        gate.release()
        await outcomes.wait(for: 4)
        #expect(outcomes.succeeded("a") && outcomes.succeeded("b"))
        #expect(outcomes.error("conflict") != nil)
        #expect(outcomes.error("fenced")?.code == .fenced)
        #expect(["a", "conflict", "fenced", "b"].allSatisfy { outcomes.runs($0) == 1 })
        #expect(log.rollbacks.load(ordering: .relaxed) == 0)
        #expect(try await values(worker) == [1, 2, 100])
        await worker.stop()
    }

    @Test func aJobThatEndsTheTransactionRollsTheBatchBack() async throws {
        let log = HookLog()
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        // As SQLite does by itself after some errors: the transaction is gone, and "a" with it.
        outcomes.submit("rollback", to: worker) { db in
            try db.execute("ROLLBACK")
            throw BrokerError(.unavailable, "rolled back")
        }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (2)") }
        gate.release()
        await outcomes.wait(for: 3)
        #expect(outcomes.succeeded("a") && outcomes.succeeded("b"))
        #expect(outcomes.error("rollback") != nil)
        #expect(outcomes.runs("a") == 2)
        #expect(try await values(worker) == [1, 2])
        await worker.stop()
    }

    @Test func aFailedCommitRetriesTheBatchJobByJob() async throws {
        let log = HookLog()
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        // A deferred foreign key fails only at COMMIT.
        outcomes.submit("orphan", to: worker) { db in try db.run("INSERT INTO child(parent) VALUES (42)") }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (2)") }
        gate.release()
        await outcomes.wait(for: 3)
        #expect(outcomes.succeeded("a") && outcomes.succeeded("b"))
        #expect(outcomes.error("orphan")?.message.contains("FOREIGN KEY") == true)
        #expect(outcomes.runs("a") == 2 && outcomes.runs("orphan") == 2)
        #expect(try await values(worker) == [1, 2])
        let orphans = try await worker.perform { db in
            var count: Int64 = 0
            try db.query("SELECT COUNT(*) FROM child") { count = $0.int(0) }
            return count
        }
        #expect(orphans == 0)
        await worker.stop()
    }

    @Test func aFailedBeforeCommitHookRetriesTheBatchJobByJob() async throws {
        // The batch's hook fails, then the first job's alone; the second job's succeeds.
        let log = HookLog(failWithRowOne: true)
        let worker = try await openWriter(path: tempPath(), hooks: log.hooks)
        let gate = WriterGate()
        let outcomes = Outcomes()
        await gate.hold(worker)
        let before = log.beforeCommits.load(ordering: .relaxed) + 1  // the gate's
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (2)") }
        gate.release()
        await outcomes.wait(for: 2)
        #expect(outcomes.error("a")?.message == "before-commit failed")
        #expect(outcomes.succeeded("b"))
        #expect(log.beforeCommits.load(ordering: .relaxed) - before == 3)
        #expect(try await values(worker) == [2])
        await worker.stop()
    }

    @Test func aBatchThatCannotBeginFailsEveryJobWithoutRunningIt() async throws {
        let path = tempPath()
        let log = HookLog()
        let worker = try await openWriter(path: path, hooks: log.hooks)
        try await worker.perform { db in try db.execute("PRAGMA busy_timeout = 0") }
        let other = Mutex<SQLiteConnection?>(try SQLiteConnection(path: path))
        let outcomes = Outcomes()
        let gate = Outcomes()
        let (entered, enter) = AsyncStream<Void>.makeStream()
        let release = DispatchSemaphore(value: 0)
        // Holds the writer thread with another connection holding the write lock.
        gate.submit("gate", to: worker) { db in
            try db.execute("COMMIT")
            try other.withLock { try $0?.execute("BEGIN IMMEDIATE") }
            enter.yield()
            release.wait()
        }
        var iterator = entered.makeAsyncIterator()
        await iterator.next()
        outcomes.submit("a", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (1)") }
        outcomes.submit("b", to: worker) { db in try db.run("INSERT INTO t(v) VALUES (2)") }
        release.signal()
        await outcomes.wait(for: 2)
        #expect(outcomes.error("a")?.code == .unavailable && outcomes.error("b")?.code == .unavailable)
        #expect(outcomes.runs("a") == 0 && outcomes.runs("b") == 0)
        try other.withLock { try $0?.execute("ROLLBACK") }
        other.withLock { $0 = nil }
        #expect(try await values(worker) == [])
        await worker.stop()
    }
}
