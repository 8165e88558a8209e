/// When to checkpoint the write-ahead log, decided on the writer thread after each batch from
/// the WAL's size in frames (pages): a pure state machine, so that the thresholds are tested
/// without a database.
///
/// SQLite's own auto-checkpoint runs on the committing connection: with it the writer stalls
/// for two fsyncs and the copy every 1,000 pages, and every confirmation queued behind it waits
/// (W2's p99). Instead the writer asks a checkpoint thread of its own for a `PASSIVE` checkpoint
/// each time `passivePages` new frames were written; those never block the writer. A passive
/// checkpoint cannot catch up with a writer that never pauses, though, and the WAL only starts
/// over from its beginning once every frame was copied (at the first write after a pause as
/// long as a checkpoint): when it reaches `restartPages` the writer itself runs a `RESTART`
/// checkpoint between two batches, right after a passive one ended (so that it copies little),
/// which bounds the WAL under sustained load.
struct WALCheckpointPolicy {
    struct Limits: Sendable, Equatable {
        /// New WAL frames after which a passive checkpoint is asked for.
        var passivePages: Int
        /// WAL frames at which the writer checkpoints and restarts the WAL itself.
        var restartPages: Int
        /// How long the writer's restart waits for readers to leave the WAL (SQLite's busy
        /// timeout) the first time; doubled after each restart they held back, up to
        /// `restartWaitMaxMilliseconds`, so that a busy reader costs the writer little at first
        /// and cannot keep the WAL growing for ever.
        var restartWaitMilliseconds: Int32 = 10
        var restartWaitMaxMilliseconds: Int32 = 1000

        /// 8 MB between passive checkpoints; a restart (which stalls the writer for two fsyncs,
        /// tens of milliseconds on a busy disk) once the WAL reached 256 MB, every 15 s or so at
        /// W2's 1,000 single-event commits a second (about 4 pages, 16 KB, each).
        static let standard = Limits(passivePages: 2048, restartPages: 65536)
    }

    enum Action: Equatable {
        case none
        /// Ask the checkpoint thread for a passive checkpoint.
        case passive
        /// Checkpoint on the writer, waiting for readers, so that the next write restarts the WAL.
        case restart
    }

    let limits: Limits
    private var nextPassive: Int
    private var nextRestart: Int
    private var lastPages = 0
    /// How long the next restart checkpoint may wait for readers.
    private(set) var restartWaitMilliseconds: Int32

    init(limits: Limits) {
        self.limits = limits
        nextPassive = limits.passivePages
        nextRestart = limits.restartPages
        restartWaitMilliseconds = limits.restartWaitMilliseconds
    }

    /// After a batch: the WAL holds `pages` frames; `passivePending` while a passive checkpoint
    /// is queued or running.
    mutating func committed(walPages pages: Int, passivePending: Bool) -> Action {
        if pages < lastPages {
            // The WAL started over from its beginning.
            nextPassive = limits.passivePages
            nextRestart = limits.restartPages
        }
        lastPages = pages
        // A passive checkpoint that is running leaves the restart less to copy: wait for it.
        if pages >= nextRestart { return passivePending ? .none : .restart }
        guard pages >= nextPassive, !passivePending else { return .none }
        nextPassive = pages + limits.passivePages
        return .passive
    }

    /// The writer's restart checkpoint ended; `succeeded` false when readers or the checkpoint
    /// thread kept it from copying everything. Either way it is not tried again before the WAL
    /// grew by another quarter limit (after a success the next write restarts the WAL, which
    /// resets the thresholds), so that a reader holding a snapshot cannot stall every batch.
    mutating func restartEnded(succeeded: Bool) {
        nextRestart = lastPages + max(1, limits.restartPages / 4)
        if succeeded {
            nextPassive = lastPages + limits.passivePages
            restartWaitMilliseconds = limits.restartWaitMilliseconds
        } else {
            restartWaitMilliseconds = min(limits.restartWaitMaxMilliseconds, restartWaitMilliseconds * 2)
        }
    }
}
