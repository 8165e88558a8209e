import CSQLite
import Logging
import Synchronization

/// Checkpoints the WAL of a file database on a thread and connection of its own, so that the
/// writer does not stall on checkpoints (``WALCheckpointPolicy`` says when, and when the WAL has
/// grown so far that the writer must restart it itself).
///
/// - Important: ``attach(to:)`` and ``writerBatchEnded(_:)`` are called only on the writer
///   thread; the state they use is touched only there.
final class SQLiteCheckpointer: @unchecked Sendable {
    private let worker = SQLiteWorker(name: "sqlite-checkpointer", transactional: false)
    private let logger: Logger
    /// A passive checkpoint is queued or running.
    private let passivePending = Atomic<Bool>(false)
    private let passiveDone = Atomic<Int>(0)
    private let restartsDone = Atomic<Int>(0)
    /// Writer thread only.
    private var policy: WALCheckpointPolicy
    /// Writer thread only: the WAL's frames after the last commit, nil when nothing was
    /// committed since the last batch ended.
    private var walPages: Int?

    init(limits: WALCheckpointPolicy.Limits, logger: Logger) {
        policy = WALCheckpointPolicy(limits: limits)
        self.logger = logger
    }

    /// Passive checkpoints that ran, and restart checkpoints the writer completed (for tests and
    /// metrics).
    var counts: (passive: Int, restarts: Int) {
        (passiveDone.load(ordering: .relaxed), restartsDone.load(ordering: .relaxed))
    }

    /// Opens the checkpoint thread's connection; `synchronous` as the writer's, which decides
    /// how a checkpoint syncs.
    func open(path: String, synchronous: String) async throws {
        try await worker.open {
            let connection = try SQLiteConnection(path: path)
            try connection.execute("PRAGMA synchronous=\(synchronous)")
            return connection
        }
    }

    func stop() async {
        await worker.stop()
    }

    /// Turns the writer connection's auto-checkpoint off and watches its WAL instead.
    func attach(to writer: SQLiteConnection) {
        writer.onWALCommit { [self] pages in walPages = pages }
    }

    /// After the writer finished a batch (its jobs are completed): asks for a passive
    /// checkpoint, or checkpoints and restarts the WAL on `writer` when it is too large.
    func writerBatchEnded(_ writer: SQLiteConnection) {
        guard let pages = walPages else { return }
        walPages = nil
        switch policy.committed(walPages: pages, passivePending: passivePending.load(ordering: .acquiring)) {
        case .none:
            break
        case .passive:
            passivePending.store(true, ordering: .releasing)
            worker.submit(worker.makeJob({ [self] connection in runPassive(connection) }, completion: { _ in }))
        case .restart:
            writer.setBusyTimeout(milliseconds: policy.restartWaitMilliseconds)
            let result = writer.checkpoint(.restart)
            writer.setBusyTimeout(milliseconds: SQLiteConnection.busyTimeoutMilliseconds)
            policy.restartEnded(succeeded: result.complete)
            if result.complete {
                restartsDone.add(1, ordering: .relaxed)
            } else {
                logger.info(
                    "WAL checkpoint held back; writes go on and the WAL grows",
                    metadata: [LogKey.reason: "WAL of \(pages) pages, \(result.copiedPages) copied, SQLite code \(result.code)"])
            }
        }
    }

    private func runPassive(_ connection: SQLiteConnection) {
        let result = connection.checkpoint(.passive)
        if result.code == SQLITE_OK {
            passiveDone.add(1, ordering: .relaxed)
        } else if result.code != SQLITE_BUSY {
            logger.warning("WAL checkpoint failed", metadata: [LogKey.error: "\(connection.error("checkpoint"))"])
        }
        passivePending.store(false, ordering: .releasing)
    }
}
