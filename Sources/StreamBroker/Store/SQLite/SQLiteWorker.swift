import Foundation

/// One SQLite connection on a ``GroupCommitThread`` of its own: the connection is opened, used
/// and closed only on that thread, so that blocking SQLite calls never run on Swift's
/// cooperative pool.
///
/// A transactional worker (the writer) runs each batch in one transaction (group commit): each
/// job in its own savepoint, completions only after `COMMIT`.
final class SQLiteWorker: @unchecked Sendable {
    /// - Important: `run` is called on the worker thread with its connection; `finish` is called
    ///   on the same thread after the batch's commit (with the commit's error, if any).
    struct Job {
        let run: (SQLiteConnection) -> Void
        let finish: ((any Error)?) -> Void
    }

    private enum Work {
        case open(() throws -> SQLiteConnection, (Result<Void, any Error>) -> Void)
        case job(Job)
        case close
    }

    private let transactional: Bool
    private let thread: GroupCommitThread<Work>
    /// - Important: touched only on the worker thread.
    private var connection: SQLiteConnection?
    /// Called on the worker thread when a batch's transaction is rolled back.
    private let onRollback: (() -> Void)?

    init(name: String, transactional: Bool, onRollback: (() -> Void)? = nil) {
        self.transactional = transactional
        self.onRollback = onRollback
        thread = GroupCommitThread(name: name)
    }

    /// Starts the thread and opens the connection on it with `connect` (which may also create
    /// the schema). Jobs submitted earlier run after it, on the new connection.
    func open(_ connect: @escaping () throws -> SQLiteConnection) async throws {
        // The thread keeps the worker alive until `stop` ends it.
        thread.start { [self] batch in runBatch(batch) }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            if !thread.submit(.open(connect, { continuation.resume(with: $0) })) {
                continuation.resume(throwing: BrokerError(.unavailable, "the store is closed"))
            }
        }
    }

    func submit(_ job: Job) {
        if !thread.submit(.job(job)) { job.finish(BrokerError(.unavailable, "the store is closed")) }
    }

    /// Finishes the queued jobs, closes the connection, then ends the thread.
    func stop() async {
        _ = thread.submit(.close)
        for case .job(let job) in await thread.stop() { job.finish(BrokerError(.unavailable, "the store is closed")) }
    }

    /// Runs `body` on the worker; for a transactional worker inside the next group commit.
    func perform<R: Sendable>(_ body: @escaping (SQLiteConnection) throws -> R) async throws -> R {
        try await withCheckedThrowingContinuation { continuation in
            submit(makeJob(body) { continuation.resume(with: $0) })
        }
    }

    func makeJob<R>(_ body: @escaping (SQLiteConnection) throws -> R, completion: @escaping (Result<R, any Error>) -> Void) -> Job {
        var result: Result<R, any Error>?
        let transactional = self.transactional
        return Job(
            run: { connection in
                if transactional {
                    do {
                        try connection.execute("SAVEPOINT job")
                        do {
                            let value = try body(connection)
                            try connection.execute("RELEASE job")
                            result = .success(value)
                        } catch {
                            try? connection.execute("ROLLBACK TO job")
                            try? connection.execute("RELEASE job")
                            result = .failure(error)
                        }
                    } catch {
                        result = .failure(error)
                    }
                } else {
                    result = Result { try body(connection) }
                }
            },
            finish: { commitError in
                if let commitError {
                    completion(.failure(commitError))
                } else {
                    completion(result ?? .failure(BrokerError(.internal, "job did not run")))
                }
            }
        )
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
    }

    private func runJobs(_ batch: [Job]) {
        guard !batch.isEmpty else { return }
        guard let connection else {
            for job in batch { job.finish(BrokerError(.unavailable, "the store is not open")) }
            return
        }
        guard transactional else {
            for job in batch {
                job.run(connection)
                job.finish(nil)
            }
            return
        }
        var failure: (any Error)?
        do {
            try connection.execute("BEGIN IMMEDIATE")
            for job in batch { job.run(connection) }
            try connection.execute("COMMIT")
        } catch {
            try? connection.execute("ROLLBACK")
            failure = error
            onRollback?()
        }
        for job in batch { job.finish(failure) }
    }
}
