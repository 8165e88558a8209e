import Foundation

/// One SQLite connection on a ``GroupCommitThread`` of its own: the connection is opened, used
/// and closed only on that thread, so that blocking SQLite calls never run on Swift's
/// cooperative pool.
///
/// A transactional worker (the writer) runs each batch in one transaction (group commit), with
/// no savepoint per job; completions only after `COMMIT`, so a success means committed. A job
/// that fails without having changed a row fails alone and the batch goes on. A job that fails
/// after changing rows (or a failed ``Hooks/beforeCommit`` or `COMMIT`) rolls the batch back,
/// and its jobs run again one by one, each in a transaction of its own, so that one bad job
/// cannot fail the others. ("Changed a row" is `sqlite3_total_changes`, which does not count
/// schema changes: a job must not fail after a `CREATE` or `DROP`.)
final class SQLiteWorker: @unchecked Sendable {
    /// A unit of work (see ``SQLiteJob``).
    typealias Job = any SQLiteJob

    /// What the owner of a transactional worker does around each transaction, on its thread.
    struct Hooks {
        /// Writes what the jobs of the transaction left for it (once per transaction, not per
        /// job); a throw rolls the transaction back.
        var beforeCommit: (SQLiteConnection) throws -> Void = { _ in }
        /// After `COMMIT`, before the jobs are finished; with the time the batch's oldest job
        /// was queued (``MonotonicTime``).
        var afterCommit: (_ queuedAt: UInt64) -> Void = { _ in }
        /// After a rollback: forget what the rolled-back jobs left in memory.
        var afterRollback: () -> Void = {}
        /// After each batch, once its jobs are finished (and so not delayed by what it does).
        var afterBatch: (SQLiteConnection) -> Void = { _ in }
    }

    private enum Work {
        case open(() throws -> SQLiteConnection, (Result<Void, any Error>) -> Void)
        case job(Job)
        case close
    }

    /// Thrown inside a batch to roll it back: a job failed after changing rows.
    private struct JobLeftChanges: Error {}

    private let transactional: Bool
    private let hooks: Hooks
    private let thread: GroupCommitThread<Work>
    /// - Important: touched only on the worker thread.
    private var connection: SQLiteConnection?
    /// When the oldest job of the batch being run was queued. - Important: touched only on the
    /// worker thread.
    private var batchQueuedAt: UInt64 = 0

    init(name: String, transactional: Bool, hooks: Hooks = Hooks()) {
        self.transactional = transactional
        self.hooks = hooks
        thread = GroupCommitThread(name: name)
    }

    /// Starts the thread and opens the connection on it with `connect` (which may also create
    /// the schema). Jobs submitted earlier run after it, on the new connection.
    func open(_ connect: @escaping () throws -> SQLiteConnection) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            // Queued before the thread starts, so that its first batch holds the jobs submitted
            // earlier and the open together (it runs the open first); a thread started first
            // could take those jobs alone and fail them as "not open".
            guard thread.submit(.open(connect, { continuation.resume(with: $0) })) else {
                return continuation.resume(throwing: BrokerError(.unavailable, "the store is closed"))
            }
            // The thread keeps the worker alive until `stop` ends it.
            thread.start { [self] batch, queuedAt in
                batchQueuedAt = queuedAt
                runBatch(batch)
            }
        }
    }

    func submit(_ job: Job) {
        if !thread.submit(.job(job)) { job.finish(BrokerError(.unavailable, "the store is closed")) }
    }

    /// Finishes the queued jobs, closes the connection, then ends the thread.
    func stop() async {
        _ = thread.submit(.close)
        // What a thread that never started leaves (an `open` queued when `stop` came is answered too).
        for work in await thread.stop() {
            switch work {
            case .job(let job): job.finish(BrokerError(.unavailable, "the store is closed"))
            case .open(_, let completion): completion(.failure(BrokerError(.unavailable, "the store is closed")))
            case .close: break
            }
        }
    }

    /// Runs `body` on the worker; for a transactional worker inside the next group commit.
    ///
    /// - Important: `body` may run twice (see ``SQLiteJob``): what it does outside the database must
    ///   be undone by ``Hooks/afterRollback``.
    func perform<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        try await withCheckedThrowingContinuation { continuation in
            submit(makeJob(body) { continuation.resume(with: $0) })
        }
    }

    func makeJob<R>(_ body: @escaping (SQLiteConnection) throws -> R, completion: @escaping (Result<R, any Error>) -> Void) -> Job {
        ClosureJob(body, completion: completion)
    }

    private func runBatch(_ batch: [Work]) {
        var batch = batch
        // Jobs submitted before `open` wait for it rather than fail.
        if connection == nil, let open = batch.firstIndex(where: { if case .open = $0 { true } else { false } }) {
            batch.insert(batch.remove(at: open), at: 0)
        }
        var jobs: [Job] = []
        for work in batch {
            switch work {
            case .job(let job):
                jobs.append(job)
            case .open(let connect, let completion):
                // Jobs queued before it run on the connection they were queued for.
                runJobs(jobs)
                jobs = []
                // Replacing the connection closes the old one (on this thread).
                connection = nil
                completion(Result { connection = try connect() })
            case .close:
                runJobs(jobs)
                jobs = []
                connection = nil
            }
        }
        runJobs(jobs)
        if let connection { hooks.afterBatch(connection) }
    }

    private func runJobs(_ batch: [Job]) {
        guard !batch.isEmpty else { return }
        guard let connection else {
            for job in batch { job.finish(BrokerError(.unavailable, "the store is not open")) }
            return
        }
        guard transactional else {
            for job in batch {
                _ = job.run(connection)
                job.finish(nil)
            }
            return
        }
        if batch.count > 1, commitTogether(batch, connection) { return }
        for job in batch { commitAlone(job, connection) }
    }

    /// Runs the batch in one transaction; false (rolled back, no job finished) when it must
    /// run again job by job.
    private func commitTogether(_ batch: [Job], _ connection: SQLiteConnection) -> Bool {
        do {
            try connection.run(.begin)
        } catch {
            // Nothing ran, and one by one each job would only wait for the same lock again.
            for job in batch { job.finish(error) }
            return true
        }
        do {
            for job in batch {
                let before = connection.totalChanges
                // A job that failed before changing a row leaves the transaction as it was.
                if !job.run(connection), connection.totalChanges != before || !connection.inTransaction {
                    throw JobLeftChanges()
                }
            }
            try hooks.beforeCommit(connection)
            try connection.run(.commit)
        } catch {
            rollBack(connection)
            return false
        }
        hooks.afterCommit(batchQueuedAt)
        for job in batch { job.finish(nil) }
        return true
    }

    private func commitAlone(_ job: Job, _ connection: SQLiteConnection) {
        do {
            try connection.run(.begin)
            guard job.run(connection) else {
                rollBack(connection)
                job.finish(nil)  // with its own failure
                return
            }
            try hooks.beforeCommit(connection)
            try connection.run(.commit)
        } catch {
            rollBack(connection)
            job.finish(error)
            return
        }
        hooks.afterCommit(batchQueuedAt)
        job.finish(nil)
    }

    private func rollBack(_ connection: SQLiteConnection) {
        // SQLite may have rolled back by itself already (then there is nothing to roll back).
        if connection.inTransaction { try? connection.run(.rollback) }
        hooks.afterRollback()
    }
}

/// A job of ``SQLiteWorker``: one object, that keeps its result between `run` and `finish`.
///
/// - Important: `run` is called on the worker thread with its connection, inside a
///   transaction for a transactional worker, and may be called again (alone) after its batch
///   was rolled back: it keeps its result and returns whether it succeeded. `finish` is called
///   once, on the same thread, after the transaction ended (with an error that replaces the
///   job's own result, if any).
protocol SQLiteJob: AnyObject {
    func run(_ connection: SQLiteConnection) -> Bool
    func finish(_ error: (any Error)?)
}

/// A job made of a body and a completion (``SQLiteWorker/makeJob(_:completion:)``).
///
/// - Important: touched only on the worker thread once submitted.
private final class ClosureJob<R>: SQLiteJob {
    private let body: (SQLiteConnection) throws -> R
    private let completion: (Result<R, any Error>) -> Void
    private var result = SQLiteJobResult<R>()

    init(_ body: @escaping (SQLiteConnection) throws -> R, completion: @escaping (Result<R, any Error>) -> Void) {
        self.body = body
        self.completion = completion
    }

    func run(_ connection: SQLiteConnection) -> Bool {
        result.capture { try body(connection) }
    }

    func finish(_ error: (any Error)?) {
        completion(result.outcome(error))
    }
}

/// What a job keeps between its run and its finish (``SQLiteJob``): the one place for both
/// halves, used by each job class directly (a value inside a concrete class, so specialized;
/// one generic job class called through the protocol was not).
struct SQLiteJobResult<R> {
    private var result: Result<R, any Error>?

    /// Runs `body` and keeps what it returned or threw; whether it succeeded.
    mutating func capture(_ body: () throws -> R) -> Bool {
        do {
            result = .success(try body())
            return true
        } catch {
            result = .failure(error)
            return false
        }
    }

    /// What the job completes with: the transaction's `error`, if any, replaces its own result.
    func outcome(_ error: (any Error)?) -> Result<R, any Error> {
        if let error { return .failure(error) }
        return result ?? .failure(BrokerError(.internal, "job did not run"))
    }
}
