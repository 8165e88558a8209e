import Logging
import Models

/// Keeps one replica's share of a consumer group's partitions (SPEC §7): heartbeats the
/// replica's membership while it has local subscribers, spreads the partitions over the live
/// member replicas (sorted ids; partition p goes to replica p mod n), takes the leases of its
/// share, renews them, and gives up the rest — a partition moves only after its old owner has
/// committed and released it, or after its lease expired.
///
/// The decisions are ``LeaseAssignment``'s; this loop executes its actions, and runs a round
/// every TTL/3 (its timer) or at once when members change or a partition is lost.
final class GroupCoordinator: Sendable {
    let topic: String
    let group: String
    private let dispatcher: GroupDispatcher
    private let coordination: any Coordination
    private let broker: Broker
    private let logger: Logger
    private let finished = Latch()

    init(dispatcher: GroupDispatcher, group: String, coordination: any Coordination, broker: Broker) {
        self.topic = dispatcher.topic
        self.group = group
        self.dispatcher = dispatcher
        self.coordination = coordination
        self.broker = broker
        var logger = broker.logger
        logger[metadataKey: LogKey.topic] = "\(dispatcher.topic)"
        logger[metadataKey: LogKey.group] = "\(group)"
        self.logger = logger
    }

    func run() async { await run(clock: ContinuousClock()) }

    /// Runs rounds until stopped, then releases every lease; the timer is a child task.
    func run<C: Clock>(clock: C) async where C.Duration == Duration {
        let start = clock.now
        let timer = DeadlineTimer(clock: clock)
        var assignment = LeaseAssignment(replica: broker.settings.replicaID, ttlMs: broker.settings.leaseTTLMs)
        func now() -> Int64 {
            start.duration(to: clock.now).wholeMilliseconds
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [dispatcher] in await timer.run { dispatcher.signalCoordinator.yield(.tick) } }
            var signals = dispatcher.coordinatorSignals.makeAsyncIterator()
            rounds: while !Task.isCancelled && !broker.isStopping {
                var action = assignment.startRound(localMembers: dispatcher.localMembers.load(ordering: .relaxed), now: now())
                while true {
                    if case .sleep(let until) = action {
                        timer.arm(at: start.advanced(by: .milliseconds(until)))
                        break
                    }
                    action = assignment.next(after: await perform(action), now: now())
                }
                switch await signals.next() {
                case .lost(let partition, let epoch):
                    for action in assignment.commitFenced(partition: partition, epoch: epoch) { _ = await perform(action) }
                case .membersChanged, .tick:
                    continue
                case .stop, nil:
                    break rounds
                }
            }
            timer.finish()
            var action = assignment.stop(now: now())
            while action != .stopped {
                action = assignment.next(after: await perform(action), now: now())
            }
        }
        finished.open()
    }

    /// Asks the loop to end (it releases its leases first) and waits for it.
    func stop() async {
        dispatcher.signalCoordinator.yield(.stop)
        // Even when cancelled: the store closes after this, and the loop may still be releasing leases.
        await finished.waitIgnoringCancellation()
    }

    /// Executes one action of the assignment; store errors become ``LeaseAssignment/Result/failed(_:)``.
    private func perform(_ action: LeaseAssignment.Action) async -> LeaseAssignment.Result {
        let me = broker.settings.replicaID
        let ttl = broker.settings.leaseTTLMs
        func lease(_ partition: Int) -> String { LeaseID.partition(topic: topic, partition: partition, group: group) }
        do {
            switch action {
            case .heartbeat:
                try await coordination.heartbeat(topic: topic, group: group, replica: me)
            case .leave:
                try await coordination.leave(topic: topic, group: group, replica: me)
            case .listReplicas:
                return .replicas(try await coordination.liveReplicas(topic: topic, group: group, ttlMs: ttl))
            case .readPartitionCount:
                return .partitionCount(try await broker.configs.load(topic).partitions)
            case .disown(let partition):
                await dispatcher.disown(partition: partition)
            case .release(let partition, let epoch):
                try await coordination.releaseLease(lease(partition), owner: me, epoch: epoch)
            case .take(let partition):
                return .taken(try await coordination.takeLease(lease(partition), owner: me, ttlMs: ttl))
            case .renew(let partition, let epoch):
                return .renewed(try await coordination.renewLease(lease(partition), owner: me, epoch: epoch, ttlMs: ttl))
            case .fence(let partition, let epoch):
                try await coordination.fence(topic: topic, partition: partition, group: group, epoch: epoch)
            case .own(let partition, let epoch):
                dispatcher.send(.own(partition: partition, epoch: epoch))
            case .audit(let kind, let partition, let epoch):
                broker.audit(
                    kind: kind.rawValue, topic: topic,
                    fields: [("group", .string(group)), ("partition", .int(partition)), ("epoch", .int(epoch))])
            case .warn(let warning):
                warn(warning)
            case .sleep, .stopped:
                break
            }
            return .done
        } catch {
            return .failed("\(error)")
        }
    }

    private func warn(_ warning: LeaseAssignment.Warning) {
        switch warning {
        case .partitionFenced(let partition, let epoch):
            logger.warning("partition lost: a commit was fenced", metadata: [LogKey.partition: "\(partition)", LogKey.epoch: "\(epoch)"])
        case .leaseLost(let partition, let epoch):
            logger.warning("lease lost", metadata: [LogKey.partition: "\(partition)", LogKey.epoch: "\(epoch)"])
        case .releaseFailed(let partition, let error):
            logger.warning("could not release a lease; it will expire", metadata: [LogKey.partition: "\(partition)", LogKey.error: "\(error)"])
        case .roundFailed(let error):
            logger.warning("lease round failed", metadata: [LogKey.error: "\(error)"])
        }
    }
}
