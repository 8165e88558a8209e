import Logging
import Models
import Synchronization

/// Keeps one replica's share of a consumer group's partitions (SPEC §7): heartbeats the
/// replica's membership while it has local subscribers, spreads the partitions over the live
/// member replicas (sorted ids; partition p goes to replica p mod n), takes the leases of its
/// share, renews them, and gives up the rest — a partition moves only after its old owner has
/// committed and released it, or after its lease expired.
final class GroupCoordinator: Sendable {
    let topic: String
    let group: String
    private let dispatcher: GroupDispatcher
    private let coordination: any Coordination
    private let broker: Broker
    private let logger: Logger
    private let finished = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    init(dispatcher: GroupDispatcher, group: String, coordination: any Coordination, broker: Broker) {
        self.topic = dispatcher.topic
        self.group = group
        self.dispatcher = dispatcher
        self.coordination = coordination
        self.broker = broker
        var logger = broker.logger
        logger[metadataKey: "topic"] = "\(dispatcher.topic)"
        logger[metadataKey: "group"] = "\(group)"
        self.logger = logger
    }

    /// The assignment rule: partition p belongs to `replicas.sorted()[p % n]`.
    static func share(of replica: String, replicas: [String], partitions: Int) -> Set<Int> {
        let sorted = Array(Set(replicas)).sorted()
        guard !sorted.isEmpty else { return [] }
        return Set((0..<partitions).filter { sorted[$0 % sorted.count] == replica })
    }

    func run() async {
        var round = RoundState()
        let ttl = broker.settings.leaseTTLMs
        var signals = dispatcher.coordinatorSignals.makeAsyncIterator()
        while !Task.isCancelled && !broker.isStopping {
            await runRound(&round, ttl: ttl)
            // Wait a third of the TTL, or less when members change or a partition is lost.
            let wake = Task { [dispatcher] in
                try? await Task.sleep(for: .milliseconds(max(50, ttl / 3)))
                guard !Task.isCancelled else { return }
                dispatcher.signalCoordinator.yield(.membersChanged)
            }
            if let signal = await signals.next(), case .lost(let partition, let epoch) = signal, round.held[partition] == epoch {
                // Only the lease this signal is about: a stale one must not drop a newer lease.
                round.held[partition] = nil
                logger.warning("partition lost: a commit was fenced", metadata: ["partition": "\(partition)", "epoch": "\(epoch)"])
                audit("lease.lost", partition: partition, epoch: epoch)
            }
            wake.cancel()
        }
        await releaseAll(&round)
        let waiters = finished.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.done = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Asks the loop to end (it releases its leases first) and waits for it.
    func stop() async {
        dispatcher.signalCoordinator.yield(.membersChanged)
        await withCheckedContinuation { continuation in
            let done = finished.withLock { state -> Bool in
                if !state.done { state.waiters.append(continuation) }
                return state.done
            }
            if done { continuation.resume() }
        }
    }

    struct RoundState {
        var held: [Int: Int64] = [:]
        var joined = false
    }

    private func runRound(_ round: inout RoundState, ttl: Int64) async {
        let me = broker.settings.replicaID
        do {
            let members = dispatcher.localMembers.load(ordering: .relaxed)
            guard members > 0 else {
                // No local subscriber: stop counting this replica in, but keep the leases while
                // no other replica has subscribers for them (a client that reconnects here keeps
                // its in-flight state); hand them over as soon as one does.
                if round.joined {
                    try await coordination.leave(topic: topic, group: group, replica: me)
                    round.joined = false
                }
                guard !round.held.isEmpty else { return }
                let others = try await coordination.liveReplicas(topic: topic, group: group, ttlMs: ttl).filter { $0 != me }
                if others.isEmpty {
                    try await renewHeld(&round, ttl: ttl)
                } else {
                    await releaseAll(&round)
                }
                return
            }
            try await coordination.heartbeat(topic: topic, group: group, replica: me)
            round.joined = true
            var replicas = try await coordination.liveReplicas(topic: topic, group: group, ttlMs: ttl)
            if !replicas.contains(me) { replicas.append(me) }
            let partitions = try await broker.configs.load(topic).partitions
            let mine = Self.share(of: me, replicas: replicas, partitions: partitions)
            for (partition, epoch) in round.held.sorted(by: { $0.key < $1.key }) where !mine.contains(partition) {
                await dispatcher.disown(partition: partition)
                // Not ours any more whatever the release does (if it fails, the lease expires).
                round.held[partition] = nil
                try await coordination.releaseLease(
                    LeaseID.partition(topic: topic, partition: partition, group: group), owner: me, epoch: epoch)
                audit("lease.released", partition: partition, epoch: epoch)
            }
            try await renewHeld(&round, ttl: ttl)
            for partition in mine.sorted() where round.held[partition] == nil {
                let id = LeaseID.partition(topic: topic, partition: partition, group: group)
                guard let epoch = try await coordination.takeLease(id, owner: me, ttlMs: ttl) else { continue }
                try await coordination.fence(topic: topic, partition: partition, group: group, epoch: epoch)
                round.held[partition] = epoch
                dispatcher.send(.own(partition: partition, epoch: epoch))
                audit("lease.acquired", partition: partition, epoch: epoch)
            }
        } catch {
            logger.warning("lease round failed", metadata: ["error": "\(error)"])
        }
    }

    private func renewHeld(_ round: inout RoundState, ttl: Int64) async throws {
        let me = broker.settings.replicaID
        for (partition, epoch) in round.held.sorted(by: { $0.key < $1.key }) {
            let id = LeaseID.partition(topic: topic, partition: partition, group: group)
            if try await !coordination.renewLease(id, owner: me, epoch: epoch, ttlMs: ttl) {
                await dispatcher.disown(partition: partition)
                round.held[partition] = nil
                logger.warning("lease lost", metadata: ["partition": "\(partition)", "epoch": "\(epoch)"])
                audit("lease.lost", partition: partition, epoch: epoch)
            }
        }
    }

    /// Commits, then gives every held lease back and leaves the group, so that other replicas
    /// take over at once (graceful shutdown, or no local subscriber left).
    private func releaseAll(_ round: inout RoundState) async {
        let me = broker.settings.replicaID
        for (partition, epoch) in round.held.sorted(by: { $0.key < $1.key }) {
            await dispatcher.disown(partition: partition)
            do {
                try await coordination.releaseLease(LeaseID.partition(topic: topic, partition: partition, group: group), owner: me, epoch: epoch)
                audit("lease.released", partition: partition, epoch: epoch)
            } catch {
                logger.warning("could not release a lease; it will expire", metadata: ["partition": "\(partition)", "error": "\(error)"])
            }
        }
        round.held = [:]
        if round.joined {
            try? await coordination.leave(topic: topic, group: group, replica: me)
            round.joined = false
        }
    }

    private func audit(_ kind: String, partition: Int, epoch: Int64) {
        broker.audit(
            kind: kind, topic: topic,
            fields: [("group", .string(group)), ("partition", .int(partition)), ("epoch", .int(epoch))])
    }
}
