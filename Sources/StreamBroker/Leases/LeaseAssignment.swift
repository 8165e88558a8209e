import DequeModule

/// One replica's share of a consumer group's partitions as a pure state machine (SPEC §7):
/// which leases to take, renew and give up, when to heartbeat, leave, fence and hand a
/// partition to the dispatcher. A round starts from the local member count; the machine then
/// asks for one action at a time and the loop answers each with its ``Result``. Time is an
/// input (`now`, milliseconds), lease expiry itself is judged by the store's clock: a lease
/// that cannot be taken is held by someone else, a renewal that fails means it was lost.
struct LeaseAssignment {
    enum Action: Equatable {
        /// Keep this replica's `members` document alive.
        case heartbeat
        /// Remove it.
        case leave
        /// Which replicas have live members of the group; answer ``Result/replicas(_:)``.
        case listReplicas
        /// The topic's partition count; answer ``Result/partitionCount(_:)``.
        case readPartitionCount
        /// Have the dispatcher commit and stop delivering the partition.
        case disown(partition: Int)
        case release(partition: Int, epoch: Int64)
        /// Answer ``Result/taken(_:)``.
        case take(partition: Int)
        /// Answer ``Result/renewed(_:)``.
        case renew(partition: Int, epoch: Int64)
        /// Make `epoch` the only one whose commits the partition's position accepts.
        case fence(partition: Int, epoch: Int64)
        /// Have the dispatcher deliver the partition at `epoch`.
        case own(partition: Int, epoch: Int64)
        case audit(AuditKind, partition: Int, epoch: Int64)
        case warn(Warning)
        /// The round is over: the next one at `until`, or sooner on a signal.
        case sleep(until: Int64)
        /// Everything is released: the loop may end.
        case stopped
    }

    enum AuditKind: String, Equatable {
        case acquired = "lease.acquired"
        case released = "lease.released"
        case lost = "lease.lost"
    }

    enum Warning: Equatable {
        /// A commit at `epoch` was fenced.
        case partitionFenced(partition: Int, epoch: Int64)
        /// A renewal found the lease gone.
        case leaseLost(partition: Int, epoch: Int64)
        case releaseFailed(partition: Int, error: String)
        case roundFailed(error: String)
    }

    enum Result: Equatable {
        case done
        case replicas([String])
        case partitionCount(Int)
        case taken(Int64?)
        case renewed(Bool)
        case failed(String)
    }

    /// The assignment rule: partition p belongs to `replicas.sorted()[p % n]`.
    static func share(of replica: String, replicas: [String], partitions: Int) -> Set<Int> {
        let sorted = Array(Set(replicas)).sorted()
        guard !sorted.isEmpty else { return [] }
        return Set((0..<partitions).filter { sorted[$0 % sorted.count] == replica })
    }

    let replica: String
    let ttlMs: Int64
    /// The leases held, with their epochs.
    private(set) var held: [Int: Int64] = [:]
    /// Whether this replica's `members` document is being kept alive.
    private(set) var joined = false

    private enum Mode {
        /// Local subscribers: heartbeat and take this replica's share.
        case subscribed
        /// No local subscriber: keep the leases while nobody else wants them.
        case unsubscribed
        case stopping
    }

    /// Steps still to take in this round; the pseudo-steps expand when reached, so that they
    /// see the results of the steps before them.
    private enum Step {
        case act(Action, onFailure: FailurePolicy)
        case checkHeld
        case renewHeld
        case takeShare
        case releaseAll
        case forgetAll
    }

    private enum FailurePolicy {
        /// The round ends with a warning (the next one tries again).
        case endRound
        /// Only this lease: it will expire.
        case warnRelease
        case ignore
    }

    private var mode = Mode.subscribed
    private var steps: Deque<Step> = []
    private var current: (action: Action, onFailure: FailurePolicy)?
    private var replicas: [String] = []
    private var share: Set<Int> = []

    init(replica: String, ttlMs: Int64) {
        self.replica = replica
        self.ttlMs = ttlMs
    }

    /// How long between rounds: a third of the lease TTL.
    var roundIntervalMs: Int64 { max(50, ttlMs / 3) }

    /// Starts a round with `localMembers` local subscribers of the group.
    mutating func startRound(localMembers: Int, now: Int64) -> Action {
        if localMembers > 0 {
            mode = .subscribed
            steps = [.act(.heartbeat, onFailure: .endRound), .act(.listReplicas, onFailure: .endRound)]
        } else {
            // No local subscriber: stop counting this replica in, but keep the leases while no
            // other replica has subscribers for them (a client that reconnects here keeps its
            // in-flight state); hand them over as soon as one does.
            mode = .unsubscribed
            steps = joined ? [.act(.leave, onFailure: .endRound), .checkHeld] : [.checkHeld]
        }
        return advance(now: now)
    }

    /// Shutting down: commit and give every lease back, then leave the group.
    mutating func stop(now: Int64) -> Action {
        mode = .stopping
        steps = [.releaseAll]
        return advance(now: now)
    }

    /// A commit at `epoch` was refused: forget that lease (only that one: a stale signal must
    /// not drop a newer lease of the same partition).
    mutating func commitFenced(partition: Int, epoch: Int64) -> [Action] {
        guard held[partition] == epoch else { return [] }
        held[partition] = nil
        return [.warn(.partitionFenced(partition: partition, epoch: epoch)), .audit(.lost, partition: partition, epoch: epoch)]
    }

    /// The answer to the last action; returns the next one.
    mutating func next(after result: Result, now: Int64) -> Action {
        guard let (action, onFailure) = current else { return advance(now: now) }
        current = nil
        if case .failed(let error) = result {
            switch onFailure {
            case .endRound:
                steps = [.act(.warn(.roundFailed(error: error)), onFailure: .ignore)]
                if mode == .stopping { steps.append(.forgetAll) }
            case .warnRelease:
                if case .release(let partition, _) = action {
                    steps.prepend(.act(.warn(.releaseFailed(partition: partition, error: error)), onFailure: .ignore))
                }
            case .ignore:
                if action == .leave { joined = false }
            }
            return advance(now: now)
        }
        switch (action, result) {
        case (.heartbeat, _):
            joined = true
        case (.leave, _):
            joined = false
        case (.listReplicas, .replicas(let live)):
            switch mode {
            case .subscribed:
                replicas = live.contains(replica) ? live : live + [replica]
                steps.prepend(.act(.readPartitionCount, onFailure: .endRound))
            case .unsubscribed, .stopping:
                steps.prepend(live.allSatisfy { $0 == replica } ? .renewHeld : .releaseAll)
            }
        case (.readPartitionCount, .partitionCount(let partitions)):
            share = Self.share(of: replica, replicas: replicas, partitions: partitions)
            var release: [Step] = []
            for (partition, epoch) in held.sorted(by: { $0.key < $1.key }) where !share.contains(partition) {
                // Not ours any more whatever the release does (if it fails, the lease expires).
                release += [
                    .act(.disown(partition: partition), onFailure: .endRound),
                    .act(.release(partition: partition, epoch: epoch), onFailure: .endRound),
                ]
            }
            steps.insert(contentsOf: release + [.renewHeld, .takeShare], at: 0)
        case (.disown(let partition), _):
            held[partition] = nil
        case (.release(let partition, let epoch), _):
            steps.prepend(.act(.audit(.released, partition: partition, epoch: epoch), onFailure: .ignore))
        case (.renew(let partition, let epoch), .renewed(false)):
            steps.insert(
                contentsOf: [
                    .act(.disown(partition: partition), onFailure: .endRound),
                    .act(.warn(.leaseLost(partition: partition, epoch: epoch)), onFailure: .ignore),
                    .act(.audit(.lost, partition: partition, epoch: epoch), onFailure: .ignore),
                ], at: 0)
        case (.take(let partition), .taken(let epoch?)):
            steps.prepend(.act(.fence(partition: partition, epoch: epoch), onFailure: .endRound))
        case (.fence(let partition, let epoch), _):
            held[partition] = epoch
            steps.insert(
                contentsOf: [
                    .act(.own(partition: partition, epoch: epoch), onFailure: .ignore),
                    .act(.audit(.acquired, partition: partition, epoch: epoch), onFailure: .ignore),
                ], at: 0)
        default:
            break
        }
        return advance(now: now)
    }

    /// The next action: expands pseudo-steps; the end of the round when none is left.
    private mutating func advance(now: Int64) -> Action {
        while let step = steps.popFirst() {
            switch step {
            case .act(let action, let onFailure):
                current = (action, onFailure)
                return action
            case .checkHeld:
                if !held.isEmpty { steps.prepend(.act(.listReplicas, onFailure: .endRound)) }
            case .renewHeld:
                let renewals = held.sorted(by: { $0.key < $1.key }).map { Step.act(.renew(partition: $0.key, epoch: $0.value), onFailure: .endRound) }
                steps.insert(contentsOf: renewals, at: 0)
            case .takeShare:
                let takes = share.sorted().filter { held[$0] == nil }.map { Step.act(.take(partition: $0), onFailure: .endRound) }
                steps.insert(contentsOf: takes, at: 0)
            case .releaseAll:
                var release: [Step] = []
                for (partition, epoch) in held.sorted(by: { $0.key < $1.key }) {
                    release += [
                        .act(.disown(partition: partition), onFailure: .ignore),
                        .act(.release(partition: partition, epoch: epoch), onFailure: .warnRelease),
                    ]
                }
                steps.insert(contentsOf: release + [.forgetAll], at: 0)
            case .forgetAll:
                held = [:]
                if joined { steps.prepend(.act(.leave, onFailure: .ignore)) }
            }
        }
        current = nil
        if mode == .stopping { return .stopped }
        return .sleep(until: now + roundIntervalMs)
    }
}
