import Foundation

/// A thread of our own that runs queued jobs in batches, so that blocking store calls never
/// run on Swift's cooperative pool: each turn takes every job queued while the previous batch
/// ran and hands them to the batch handler together (group commit: one transaction, one
/// `insert`).
///
/// Used by the SQLite writer and reader and by the MongoDB appender.
///
/// - Important: the handler runs only on the thread, one batch at a time, in submission order.
final class GroupCommitThread<Job>: @unchecked Sendable {
    private let name: String
    /// - Important: the state below is guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [Job] = []
    /// When the oldest queued job was queued (``MonotonicTime``): read once per batch, when a
    /// job finds the queue empty, never per job.
    private var queuedSince: UInt64 = 0
    private var started = false
    private var stopping = false
    /// Opens when the thread has ended (or when it never started and `stop` was called).
    private let ended = Latch()

    init(name: String) {
        self.name = name
    }

    /// Starts the thread.
    /// - Parameter process: runs one batch on the thread; it must complete every job it is given.
    ///   Its second argument is when the batch's oldest job was queued (``MonotonicTime``).
    func start(_ process: @escaping @Sendable ([Job], UInt64) -> Void) {
        condition.lock()
        defer { condition.unlock() }
        guard !started, !stopping else { return }
        started = true
        let thread = Thread { [self] in loop(process) }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Queues a job; false (and nothing queued) once `stop` was called.
    func submit(_ job: Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        if jobs.isEmpty { queuedSince = MonotonicTime.now() }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Runs the jobs already queued, then ends the thread; returns once it has ended.
    ///
    /// - Returns: the jobs that never ran because the thread was never started (the caller
    ///   completes them).
    @discardableResult
    func stop() async -> [Job] {
        if let neverRun = beginStopping() {
            ended.open()
            return neverRun
        }
        // Even when cancelled: the caller frees what the thread is still using once this returns.
        await ended.waitIgnoringCancellation()
        return []
    }

    /// Marks the thread as stopping; returns the queued jobs when it never started.
    private func beginStopping() -> [Job]? {
        condition.lock()
        defer { condition.unlock() }
        stopping = true
        guard started else {
            defer { jobs = [] }
            return jobs
        }
        condition.signal()
        return nil
    }

    private func loop(_ process: ([Job], UInt64) -> Void) {
        // Two buffers take turns: the queue and the batch being processed (emptied, its
        // capacity kept, once processed), so that a turn allocates no array.
        var batch: [Job] = []
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            swap(&batch, &jobs)
            let queuedAt = queuedSince
            let done = batch.isEmpty && stopping
            condition.unlock()
            if done {
                ended.open()
                return
            }
            process(batch, queuedAt)
            batch.removeAll(keepingCapacity: true)
        }
    }
}
