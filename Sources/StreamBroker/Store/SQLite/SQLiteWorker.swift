import Foundation

/// A thread that owns one SQLite connection and runs jobs on it, so that blocking SQLite calls
/// never run on Swift's cooperative pool.
///
/// In write mode the worker takes every job queued while the previous batch ran and runs them
/// in one transaction (group commit): each job in its own savepoint, completions only after
/// `COMMIT`.
final class SQLiteWorker: @unchecked Sendable {
    /// - Important: `run` is called on the worker thread with its connection; `finish` is called
    ///   on the same thread after the batch's commit (with the commit's error, if any).
    struct Job {
        let run: (SQLiteConnection) -> Void
        let finish: ((any Error)?) -> Void
    }

    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var stopping = false
    private var stopped = false
    private let transactional: Bool
    private let name: String
    private let connection: SQLiteConnection
    private var thread: Thread?

    /// - Important: the connection is handed over: after this call it is used only on the worker thread.
    init(name: String, connection: SQLiteConnection, transactional: Bool) {
        self.name = name
        self.connection = connection
        self.transactional = transactional
    }

    func start() {
        let thread = Thread { [self] in loop() }
        thread.name = name
        thread.stackSize = 1 << 20
        self.thread = thread
        thread.start()
    }

    func submit(_ job: Job) {
        condition.lock()
        if stopped {
            condition.unlock()
            job.finish(BrokerError(.unavailable, "the store is closed"))
            return
        }
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Finishes the queued jobs, then ends the thread.
    func stop() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submit(Job(run: { _ in }, finish: { _ in continuation.resume() }))
            condition.lock()
            stopping = true
            condition.signal()
            condition.unlock()
        }
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

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            let done = stopping && batch.isEmpty
            if done { stopped = true }
            condition.unlock()
            if done { return }
            runBatch(batch)
        }
    }

    private func runBatch(_ batch: [Job]) {
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

    /// Called on the worker thread when a batch's transaction is rolled back.
    var onRollback: (() -> Void)?
}
