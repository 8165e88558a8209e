import DequeModule
import Logging
import Models

/// The mutable side of a consumer group's dispatcher, owned by its run loop: it turns each
/// input into events of its ``GroupState`` and executes the actions that come back — store
/// reads and commits, MESSAGE frames, dead letters, audit records, the timer. It decides
/// nothing about timing itself; it owns the clock and tells the state machine what time it is.
final class DispatcherLoop<C: Clock> where C.Duration == Duration {
    typealias MemberID = ClientConnection.ID
    typealias Action = GroupState.Action

    let topic: String
    let group: String
    let serial: UInt64
    let dispatcher: GroupDispatcher
    let broker: Broker
    let store: any EventStore
    /// Partitions come and go with leases (several replicas on a shared store).
    let coordinated: Bool
    /// The first subscriber's `from`, for partitions of a new group acquired later.
    var initialFrom: StartPosition?
    let settings: BrokerSettings
    let logger: Logger
    var state: GroupState
    var connections: [MemberID: ClientConnection] = [:]
    var loaded = false
    let timer: DeadlineTimer<C>
    let start: C.Instant
    /// The topic's metrics, kept so that recording is no look-up.
    let instruments: BrokerMetrics.PerTopic
    /// What every MESSAGE of this dispatcher shares.
    let messageTemplate: MessageFrame.Template

    /// - Parameter group: the dispatcher's group (a topic's ephemeral subscriptions have an
    ///   ``EphemeralLoop`` instead).
    init(dispatcher: GroupDispatcher, group: String, broker: Broker, timer: DeadlineTimer<C>) {
        self.dispatcher = dispatcher
        self.serial = dispatcher.serial
        self.topic = dispatcher.topic
        self.group = group
        self.coordinated = broker.store.coordination != nil
        self.broker = broker
        self.store = broker.store
        self.settings = broker.settings
        self.timer = timer
        self.start = timer.clock.now
        instruments = broker.metrics.topic(dispatcher.topic)
        messageTemplate = MessageFrame.Template(topic: dispatcher.topic, group: group)
        var logger = broker.logger
        logger[metadataKey: LogKey.topic] = "\(dispatcher.topic)"
        logger[metadataKey: LogKey.group] = "\(group)"
        self.logger = logger
        let config = broker.configs.cachedOrDefault(dispatcher.topic)
        var tuning = GroupState.Tuning(broker.settings)
        tuning.retention = config.retentionMs != nil
        state = GroupState(
            maxAttempts: config.effectiveMaxAttempts, backoffMs: config.redeliveryBackoffMs ?? [],
            tuning: tuning)
    }

    /// The topic settings the decisions use (a changed config arrives as an input).
    func apply(_ config: TopicConfig) {
        state.maxAttempts = config.effectiveMaxAttempts
        state.backoffMs = config.redeliveryBackoffMs ?? []
        state.tuning.retention = config.retentionMs != nil
    }

    /// Milliseconds since the loop started, on its clock: the state machine's time.
    var now: Int64 {
        start.duration(to: timer.clock.now).wholeMilliseconds
    }

    /// Handles inputs until stopped: each batch taken from the mailbox is handled in order,
    /// then the group is pumped once. Returns the inputs it took and did not handle (after a stop).
    func run(_ inputs: Mailbox<GroupDispatcher.Input>) async -> [GroupDispatcher.Input] {
        while let batch = await inputs.next() {
            for (index, input) in batch.enumerated() {
                // The loop runs on an event loop (``EventLoopExecutor``): a long batch lets the
                // loop's sockets have a turn now and then.
                if index > 0 && index.isMultiple(of: Self.inputsPerTurn) { await Task.yield() }
                if case .stop(let done) = input {
                    await execute(state.flushCommits())
                    done?.resume()
                    return Array(batch[(index + 1)...])
                }
                await handle(input)
            }
            await execute(state.pumpRequested(now: now))
            if state.tuning.acksDeferred { dispatcher.acksMayWait.store(state.acksMayWait, ordering: .relaxed) }
        }
        await execute(state.flushCommits())
        return []
    }

    /// Inputs handled between two yields of a long batch.
    static var inputsPerTurn: Int { 512 }

    // MARK: Inputs

    func handle(_ input: GroupDispatcher.Input) async {
        switch input {
        case .subscribe(let session, let request):
            await subscribe(session, request)
        case .leave(let id):
            connections[id] = nil
            await execute(state.memberLeft(id, now: now))
            membersChanged()
        case .ack(let partition, let offset):
            state.ackReceived(partition: partition, offset: offset, now: now)
        case .nack(let partition, let offset, let reason, let delayMs):
            await execute(state.nackReceived(partition: partition, offset: offset, reason: reason, delayMs: delayMs, now: now))
        case .flow(let id, let credits):
            state.flow(id, credits: credits)
        case .appended(let events):
            guard loaded else { return }
            state.recheckHoles()
            var start = events.startIndex
            while start < events.endIndex {
                let partition = events[start].partition
                var end = start
                while end < events.endIndex && events[end].partition == partition { end += 1 }
                if partition < state.partitions.count {
                    if connections.isEmpty {
                        state.noteHighWatermark(partition, events[end - 1].offset)
                    } else {
                        state.offer(partition, events[start..<end])
                    }
                }
                start = end
            }
        case .highWatermarks(let marks):
            guard loaded else { return }
            state.recheckHoles()
            if state.highWatermarksRead(marks) { instruments.rescans.increment() }
        case .config(let config):
            apply(config)
            if loaded && config.partitions > state.partitions.count {
                for partition in state.partitions.count..<config.partitions {
                    if coordinated {
                        state.addUnownedPartition(index: partition)
                    } else {
                        state.addPartition(index: partition, start: 1, highWatermark: 0)
                    }
                }
            }
        case .reset(let from, let reply):
            do {
                if !loaded { try await load(from: from) }
                reply.resume(returning: .success(try await reset(to: from)))
            } catch {
                reply.resume(returning: .failure(error))
            }
        case .snapshot(let reply):
            reply.resume(returning: snapshot())
        case .own(let partition, let epoch):
            do {
                try await own(partition: partition, epoch: epoch)
            } catch {
                logger.warning("could not load an acquired partition", metadata: [LogKey.partition: "\(partition)", LogKey.error: "\(error)"])
                await execute(state.partitionLoadFailed(partition: partition, epoch: epoch))
            }
        case .disown(let partition, let reply):
            await execute(state.flushCommits())
            state.disown(partition: partition)
            reply.resume()
        case .tick:
            state.tickReceived()
        case .drained, .stop:
            // `.drained` is an ephemeral loop's; `.stop` is taken by `run`.
            break
        }
    }

    func membersChanged() {
        dispatcher.localMembers.store(state.members.count, ordering: .relaxed)
        if coordinated { dispatcher.signalCoordinator.yield(.membersChanged) }
    }

    // MARK: Actions

    /// Executes actions in order; each answer to the state machine may bring more.
    func execute(_ actions: [Action]) async {
        var queue = Deque(actions)
        while let action = queue.popFirst() {
            queue.append(contentsOf: await perform(action))
        }
    }

    private func perform(_ action: Action) async -> [Action] {
        switch action {
        case .read(let partition, let from, let limit):
            do {
                let events = try await store.read(topic: topic, partition: partition, from: from, limit: limit)
                return state.readSucceeded(partition: partition, from: from, events: events, now: now)
            } catch {
                logger.warning("read failed; retrying", metadata: [LogKey.error: "\(error)"])
                return state.readFailed(now: now)
            }
        case .readLowestOffset(let partition, let from):
            do {
                let lowest = try await store.lowestOffset(topic: topic, partition: partition)
                return state.lowestOffsetRead(partition: partition, from: from, lowest: lowest, now: now)
            } catch {
                logger.warning("read failed; retrying", metadata: [LogKey.error: "\(error)"])
                return state.readFailed(now: now)
            }
        case .send(let deliveries):
            send(deliveries)
            return state.framesSent(now: now)
        case .commit(let commits):
            return state.commitsCompleted(await commit(commits), now: now)
        case .clearAttempts(let partition, let upTo):
            try? await store.clearAttempts(topic: topic, partition: partition, group: group, upTo: upTo)
            return []
        case .persistAttempts(let end):
            do {
                try await store.setAttempts(
                    topic: topic, partition: end.partition, group: group, offset: end.event.offset, attempts: end.attempts, reason: end.reason)
                state.attemptsPersisted(partition: end.partition, offset: end.event.offset)
            } catch {
                logger.warning("could not persist attempts", metadata: [LogKey.error: "\(error)"])
            }
            return []
        case .deadLetter(let end):
            do {
                try await broker.deadLetter(end.event, group: group, attempts: end.attempts, reason: end.reason)
                state.deadLetterPublished(end, now: now)
                return []
            } catch {
                logger.error("dead-lettering failed; will retry", metadata: [LogKey.offset: "\(end.event.offset)", LogKey.error: "\(error)"])
                return state.deadLetterFailed(end, now: now)
            }
        case .audit(let record):
            audit(record)
            return []
        case .partitionLost(let partition, let epoch):
            dispatcher.signalCoordinator.yield(.lost(partition: partition, epoch: epoch))
            return []
        case .armTimer(let deadline):
            timer.arm(at: start.advanced(by: .milliseconds(deadline)))
            return []
        }
    }

    private func commit(_ commits: [GroupState.Commit]) async -> [(commit: GroupState.Commit, outcome: GroupState.CommitOutcome)] {
        var results: [(commit: GroupState.Commit, outcome: GroupState.CommitOutcome)] = []
        for commit in commits {
            do {
                let started = MonotonicTime.now()
                try await store.commit(topic: topic, partition: commit.partition, group: group, lastCommitted: commit.committed, epoch: commit.epoch)
                instruments.commitDuration.recordNanoseconds(Int64(MonotonicTime.now() &- started))
                results.append((commit, .committed))
            } catch let error as BrokerError where error.code == .fenced {
                logger.warning(
                    "commit refused (fenced); giving the partition up",
                    metadata: [LogKey.partition: "\(commit.partition)", LogKey.epoch: "\(commit.epoch)"])
                results.append((commit, .fenced))
            } catch {
                logger.warning("commit failed; will retry", metadata: [LogKey.error: "\(error)"])
                results.append((commit, .failed))
            }
        }
        return results
    }

    private func audit(_ record: GroupState.Audit) {
        switch record {
        case .redelivery(let end):
            instruments.redelivered.increment()
            broker.audit(
                kind: "redelivery", topic: topic,
                fields: [
                    ("group", .string(group)), ("partition", .int(end.partition)), ("offset", .int(end.event.offset)),
                    ("attempts", .int(end.attempts)), ("reason", end.reason.map(JSONValue.string) ?? .null),
                ])
        case .gapSkipped(let partition, let range):
            logger.warning(
                "skipped missing offsets after the gap timeout",
                metadata: [LogKey.partition: "\(partition)", LogKey.offset: "\(range.lowerBound)", LogKey.through: "\(range.upperBound)"])
            broker.audit(
                kind: "gap.skipped", topic: topic,
                fields: [
                    ("group", .string(group)), ("partition", .int(partition)), ("offset", .int(range.lowerBound)),
                    ("through", .int(range.upperBound)),
                ])
        }
    }
}
