import Logging
import Models
import Synchronization

/// Drives one ``GroupState``: a loop over an AsyncStream of inputs (subscribes, acks, wake-ups
/// from the change feed, timer ticks) that reads from the store, sends MESSAGE frames and
/// commits the watermark.
final class GroupDispatcher: Sendable {
    typealias MemberID = ClientConnection.ID

    enum Input: Sendable {
        case subscribe(Session, SubscribeRequest)
        case leave(MemberID)
        case ack(partition: Int, offset: Int64)
        case nack(partition: Int, offset: Int64, reason: String?, delayMs: Int64?)
        case flow(MemberID, credits: Int64)
        case appended([Event])
        case highWatermarks([Int64])
        case config(TopicConfig)
        case reset(StartPosition, CheckedContinuation<Result<[GroupPosition], any Error>, Never>)
        case snapshot(CheckedContinuation<[PartitionStats], Never>)
        /// This replica now holds the partition's lease at `epoch`.
        case own(partition: Int, epoch: Int64)
        /// This replica gives the partition up (after committing what it can).
        case disown(partition: Int, CheckedContinuation<Void, Never>)
        case tick
        case stop(CheckedContinuation<Void, Never>?)
    }

    /// What `/stats` shows of one partition of a group.
    struct PartitionStats: Sendable {
        var partition: Int
        var committed: Int64
        var highWatermark: Int64
        var inflight: Int
        var maxInflight: Int
        var oldestUnackedMs: Int64?
        var redeliveries: Int
        var deadLetters: Int
        var connections: Int
        var epoch: Int64
        var owned: Bool
    }

    let topic: String
    /// nil for an ephemeral subscription.
    let group: String?
    private let stream: AsyncStream<Input>
    private let inputs: AsyncStream<Input>.Continuation
    private let broker: Broker
    /// Local subscribers, read by the group's lease coordinator.
    let localMembers = Atomic<Int>(0)
    /// Wakes the coordinator (members changed, a partition was lost).
    let coordinatorSignals: AsyncStream<CoordinatorSignal>
    let signalCoordinator: AsyncStream<CoordinatorSignal>.Continuation

    enum CoordinatorSignal: Sendable {
        case membersChanged
        /// A commit at `epoch` was refused: the partition is gone.
        case lost(partition: Int, epoch: Int64)
    }

    /// Unique per dispatcher, for the broker's registry.
    let serial: UInt64

    init(topic: String, group: String?, serial: UInt64, broker: Broker) {
        self.serial = serial
        self.topic = topic
        self.group = group
        self.broker = broker
        (stream, inputs) = AsyncStream<Input>.makeStream()
        (coordinatorSignals, signalCoordinator) = AsyncStream<CoordinatorSignal>.makeStream()
    }

    func disown(partition: Int) async {
        await withCheckedContinuation { send(.disown(partition: partition, $0)) }
    }

    func send(_ input: Input) {
        if case .terminated = inputs.yield(input) { Self.abandon(input) }
    }

    /// Answers an input the loop will never handle (it has ended), so no caller waits forever.
    static func abandon(_ input: Input) {
        switch input {
        case .reset(_, let reply): reply.resume(returning: .failure(BrokerError(.unavailable, "the subscription has ended; retry")))
        case .snapshot(let reply): reply.resume(returning: [])
        case .disown(_, let reply): reply.resume()
        case .stop(let done): done?.resume()
        case .subscribe(let session, let request):
            session.connection.send(ServerFrame.error(RequestError(.unavailable, "the subscription has ended; subscribe again", rid: request.rid)))
        default: break
        }
    }

    func snapshot() async -> [PartitionStats] {
        await withCheckedContinuation { send(.snapshot($0)) }
    }

    func stop() async {
        await withCheckedContinuation { send(.stop($0)) }
    }

    func run() async {
        let loop = DispatcherLoop(dispatcher: self, broker: broker, wake: { [inputs] in inputs.yield($0) })
        var iterator = stream.makeAsyncIterator()
        await loop.run(&iterator)
        inputs.finish()
        while let input = await iterator.next() { Self.abandon(input) }
    }
}

/// The mutable side of a dispatcher, owned by its run loop.
private final class DispatcherLoop {
    typealias MemberID = ClientConnection.ID

    let topic: String
    let group: String?
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
    let wake: @Sendable (GroupDispatcher.Input) -> Void
    var state: GroupState
    var connections: [MemberID: ClientConnection] = [:]
    var loaded = false
    var commitDue: Int64?
    var timer: Task<Void, Never>?
    var timerDeadline: Int64?
    var retryAfterError = false
    /// Dead letters whose publish to the DLQ failed, retried (only that publish) when due.
    var pendingDeadLetters: [(end: GroupState.AttemptEnd, due: Int64)] = []
    /// Offsets with attempts in the store, per partition, cleared once the watermark passes them.
    var storedAttempts: [Int: Set<Int64>] = [:]
    let clock = ContinuousClock()
    let start = ContinuousClock.now

    init(dispatcher: GroupDispatcher, broker: Broker, wake: @escaping @Sendable (GroupDispatcher.Input) -> Void) {
        self.dispatcher = dispatcher
        self.serial = dispatcher.serial
        self.topic = dispatcher.topic
        self.group = dispatcher.group
        self.coordinated = dispatcher.group != nil && broker.store.coordination != nil
        self.broker = broker
        self.store = broker.store
        self.settings = broker.settings
        self.wake = wake
        var logger = broker.logger
        logger[metadataKey: "topic"] = "\(dispatcher.topic)"
        logger[metadataKey: "group"] = "\(dispatcher.group ?? "-")"
        self.logger = logger
        let config = broker.configs.cachedOrDefault(dispatcher.topic)
        state = GroupState(ephemeral: dispatcher.group == nil, maxAttempts: config.effectiveMaxAttempts, backoffMs: config.redeliveryBackoffMs ?? [])
    }

    var now: Int64 {
        let elapsed = clock.now - start
        return elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
    }

    func run(_ inputs: inout AsyncStream<GroupDispatcher.Input>.Iterator) async {
        while let input = await inputs.next() {
            if case .stop(let done) = input {
                await flushCommits()
                timer?.cancel()
                done?.resume()
                return
            }
            await handle(input)
            var membership = false
            if case .subscribe = input { membership = true }
            if case .leave = input { membership = true }
            if group == nil && membership && connections.isEmpty {
                timer?.cancel()
                broker.unregister(topic: topic, serial: serial)
                return
            }
            await pump()
        }
        await flushCommits()
        timer?.cancel()
    }

    // MARK: Inputs

    func handle(_ input: GroupDispatcher.Input) async {
        switch input {
        case .subscribe(let session, let request):
            await subscribe(session, request)
        case .leave(let id):
            connections[id] = nil
            await handleEnded(state.removeMember(id, now: now))
            membersChanged()
        case .ack(let partition, let offset):
            if state.ack(partition: partition, offset: offset) { scheduleCommit() }
        case .nack(let partition, let offset, let reason, let delayMs):
            if let ended = state.nack(partition: partition, offset: offset, reason: reason, delayMs: delayMs, now: now) {
                await handleEnded([ended])
            }
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
            for (partition, mark) in marks.enumerated() where partition < state.partitions.count {
                state.noteHighWatermark(partition, mark)
            }
        case .config(let config):
            state.maxAttempts = config.effectiveMaxAttempts
            state.backoffMs = config.redeliveryBackoffMs ?? []
            if loaded && config.partitions > state.partitions.count {
                for partition in state.partitions.count..<config.partitions {
                    if coordinated { state.addUnownedPartition(index: partition) } else { state.addPartition(index: partition, start: 1, highWatermark: 0) }
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
                logger.warning("could not load an acquired partition", metadata: ["partition": "\(partition)", "error": "\(error)"])
                state.disown(partition: partition)
                dispatcher.signalCoordinator.yield(.lost(partition: partition, epoch: epoch))
            }
        case .disown(let partition, let reply):
            await flushCommits()
            state.disown(partition: partition)
            reply.resume()
        case .tick:
            state.recheckHoles()
            retryAfterError = false
            timer = nil
            timerDeadline = nil
        case .stop:
            break
        }
    }

    func subscribe(_ session: Session, _ request: SubscribeRequest) async {
        let connection = session.connection
        do {
            if let other = state.members.keys.first(where: { $0 != connection.id }), request.filter != state.filter {
                _ = other
                throw RequestError.badRequest("every member of group '\(group ?? "")' must use the same filter", rid: request.rid)
            }
            if !loaded {
                try await load(from: request.from)
            } else if request.reset {
                _ = try await reset(to: request.from ?? .latest)
            }
            state.filter = request.filter
            let config = broker.configs.cachedOrDefault(topic)
            state.addMember(
                GroupState.Member(
                    id: connection.id,
                    maxInflight: request.maxInflight ?? settings.maxInflight,
                    ackTimeoutMs: request.ackTimeoutMs ?? config.ackTimeoutMs ?? settings.ackTimeoutMs))
            connections[connection.id] = connection
            connection.send(ServerFrame.subscribed(topic: topic, group: group, rid: request.rid))
            membersChanged()
        } catch {
            // A connection that is already a member keeps its subscription as it was.
            if state.members[connection.id] == nil { session.forget(topic: topic, group: group, serial: serial) }
            connection.send(ServerFrame.error(RequestError(error, rid: request.rid)))
        }
    }

    /// Reads positions, high-water marks and attempts for every partition.
    func load(from: StartPosition?) async throws {
        let config = try await broker.configs.load(topic)
        state.maxAttempts = config.effectiveMaxAttempts
        state.backoffMs = config.redeliveryBackoffMs ?? []
        let marks = try await store.highWatermarks(topic: topic, partitions: config.partitions)
        if coordinated, let group {
            // Partitions arrive one by one as this replica takes their leases. A new group's
            // start is fixed now (so `latest` means latest at SUBSCRIBE), whoever delivers it.
            initialFrom = from
            for partition in 0..<config.partitions where partition >= state.partitions.count {
                state.addUnownedPartition(index: partition)
            }
            if try await store.positions(topic: topic, group: group).isEmpty {
                for partition in 0..<config.partitions {
                    let start = try await resolve(from ?? .latest, partition: partition, highWatermark: marks[partition])
                    do {
                        try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: 0)
                    } catch let error as BrokerError where error.code == .fenced {
                        // Another replica created it first; its start stands.
                    }
                }
            }
        } else if let group {
            let positions = try await store.positions(topic: topic, group: group)
            let known = Dictionary(positions.map { ($0.partition, $0.lastCommitted) }, uniquingKeysWith: max)
            for partition in 0..<config.partitions {
                if let committed = known[partition] {
                    let attempts = try await store.attempts(topic: topic, partition: partition, group: group, above: committed)
                    state.addPartition(index: partition, start: committed + 1, highWatermark: marks[partition], attempts: attempts)
                } else {
                    // A new group starts at `from` (default latest); a partition added to an
                    // existing group starts at its beginning so nothing is skipped.
                    let start = try await resolve(known.isEmpty ? (from ?? .latest) : .earliest, partition: partition, highWatermark: marks[partition])
                    state.addPartition(index: partition, start: start, highWatermark: marks[partition])
                    try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: 0)
                }
            }
        } else {
            for partition in 0..<config.partitions {
                let start = try await resolve(from ?? .latest, partition: partition, highWatermark: marks[partition])
                state.addPartition(index: partition, start: start, highWatermark: marks[partition])
            }
        }
        loaded = true
    }

    func resolve(_ from: StartPosition, partition: Int, highWatermark: Int64) async throws -> Int64 {
        switch from {
        case .latest:
            return highWatermark + 1
        case .earliest:
            return try await store.lowestOffset(topic: topic, partition: partition) ?? highWatermark + 1
        case .offset(let offset):
            if offset > highWatermark { return highWatermark + 1 }
            // Below the first offset still stored (0, or removed by retention): the earliest.
            let lowest = try await store.lowestOffset(topic: topic, partition: partition) ?? highWatermark + 1
            return max(offset, lowest)
        case .timestamp(let ts):
            return try await store.firstOffset(topic: topic, partition: partition, atOrAfter: ts) ?? highWatermark + 1
        }
    }

    func reset(to from: StartPosition) async throws -> [GroupPosition] {
        let marks = try await store.highWatermarks(topic: topic, partitions: state.partitions.count)
        var positions: [GroupPosition] = []
        for partition in state.partitions.indices {
            state.noteHighWatermark(partition, marks[partition])
            let start = try await resolve(from, partition: partition, highWatermark: state.partitions[partition].highWatermark)
            if coordinated, let group, !state.partitions[partition].owned {
                try await resetElsewhere(partition: partition, group: group, start: start)
                positions.append(GroupPosition(group: group, partition: partition, lastCommitted: start - 1, epoch: 0))
                continue
            }
            let epoch = state.partitions[partition].epoch
            state.reset(partition: partition, start: start)
            state.partitions[partition].epoch = epoch
            if let group {
                try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
                try await store.clearAttempts(topic: topic, partition: partition, group: group, upTo: .max)
                state.partitions[partition].persisted = start - 1
            }
            positions.append(GroupPosition(group: group ?? "", partition: partition, lastCommitted: start - 1, epoch: 0))
        }
        if let group {
            broker.audit(kind: "group.reset", topic: topic, fields: [("group", .string(group)), ("from", from.jsonValue)])
        }
        return positions
    }

    /// Loads a partition whose lease this replica just took, from the committed watermark.
    func own(partition: Int, epoch: Int64) async throws {
        guard let group else { return }
        let config = try await broker.configs.load(topic)
        let marks = try await store.highWatermarks(topic: topic, partitions: max(config.partitions, partition + 1))
        let positions = try await store.positions(topic: topic, group: group)
        let start: Int64
        var attempts: [Int64: Int] = [:]
        if let position = positions.first(where: { $0.partition == partition }) {
            start = position.lastCommitted + 1
            attempts = try await store.attempts(topic: topic, partition: partition, group: group, above: position.lastCommitted)
        } else {
            start = try await resolve(positions.isEmpty ? (initialFrom ?? .latest) : .earliest, partition: partition, highWatermark: marks[partition])
            try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
        }
        state.addPartition(index: partition, start: start, highWatermark: marks[partition], attempts: attempts, epoch: epoch)
        logger.info("delivering partition", metadata: ["partition": "\(partition)", "epoch": "\(epoch)", "from": "\(start)"])
    }

    /// Resets a partition another replica delivers: the new position is written with a higher
    /// epoch, which fences the owner; it gives the partition up and whoever takes it next
    /// starts from the new position.
    func resetElsewhere(partition: Int, group: String, start: Int64) async throws {
        let current = try await store.positions(topic: topic, group: group).first { $0.partition == partition }
        let epoch = current?.epoch ?? 0
        try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
        try await broker.store.coordination?.fence(topic: topic, partition: partition, group: group, epoch: epoch + 1)
    }

    func membersChanged() {
        dispatcher.localMembers.store(state.members.count, ordering: .relaxed)
        if coordinated { dispatcher.signalCoordinator.yield(.membersChanged) }
    }

    // MARK: Attempts that ended

    func handleEnded(_ ended: [GroupState.AttemptEnd]) async {
        guard let group else { return }
        for end in ended {
            let event = end.event
            defer {
                if let retry = state.partitions[end.partition].retry[event.offset] { schedule(at: retry.notBefore) }
            }
            if end.deadLetter {
                do {
                    try await broker.deadLetter(event, group: group, attempts: end.attempts, reason: end.reason)
                    state.deadLettered(partition: end.partition, offset: event.offset)
                    scheduleCommit()
                } catch {
                    // Only the DLQ publish is retried; the message does not go back to a consumer.
                    logger.error("dead-lettering failed; will retry", metadata: ["offset": "\(event.offset)", "error": "\(error)"])
                    pendingDeadLetters.append((end, now + 1000))
                    schedule(at: now + 1000)
                }
            } else {
                broker.metrics.redelivered(topic: topic)
                do {
                    try await store.setAttempts(
                        topic: topic, partition: end.partition, group: group, offset: event.offset, attempts: end.attempts, reason: end.reason)
                    storedAttempts[end.partition, default: []].insert(event.offset)
                } catch {
                    logger.warning("could not persist attempts", metadata: ["error": "\(error)"])
                }
                broker.audit(
                    kind: "redelivery", topic: topic,
                    fields: [
                        ("group", .string(group)), ("partition", .int(end.partition)), ("offset", .int(event.offset)),
                        ("attempts", .int(end.attempts)), ("reason", end.reason.map(JSONValue.string) ?? .null),
                    ])
            }
        }
    }

    // MARK: Delivery

    func pump() async {
        if let first = pendingDeadLetters.first, first.due <= now {
            let due = pendingDeadLetters.filter { $0.due <= now }.map(\.end)
            pendingDeadLetters.removeAll { $0.due <= now }
            await handleEnded(due)
        }
        // The armed timer is never later than the earliest ack deadline (deliveries only move it
        // earlier), so while it lies ahead nothing can have expired: skip scanning the whole
        // in-flight map on every ack.
        if timerDeadline.map({ $0 <= now }) ?? true {
            let ended = state.expire(now: now)
            if !ended.isEmpty { await handleEnded(ended) }
        }
        var rounds = 0
        while rounds < 64 {
            rounds += 1
            let deliveries = state.takeDeliveries(now: now)
            send(deliveries)
            noteDeadlines(of: deliveries)
            if group != nil, commitDue == nil, !state.dirtyPartitions.isEmpty { scheduleCommit() }
            if retryAfterError { break }
            var needRead = state.partitionsNeedingRead()
            if group == nil {
                // Ephemeral: read more only while the socket keeps up.
                guard let connection = connections.values.first else { break }
                if connection.pending > settings.ephemeralQueueLimit / 2 {
                    connection.whenDrained(to: settings.ephemeralQueueLimit / 4) { [wake] in wake(.tick) }
                    needRead = []
                }
            }
            if needRead.isEmpty { break }
            var progressed = false
            for partition in needRead {
                let from = state.partitions[partition].readFrom
                let limit = group == nil ? max(1, min(256, settings.ephemeralQueueLimit / 4)) : readLimit()
                do {
                    let events = try await store.read(topic: topic, partition: partition, from: from, limit: limit)
                    let readAt = now
                    switch state.noteRead(partition, from: from, events: events, now: readAt, gapTimeoutMs: settings.gapTimeoutMs) {
                    case .none:
                        progressed = progressed || !events.isEmpty
                    case .waiting(let deadline):
                        // On a topic with retention, offsets below the lowest stored one were
                        // deleted, not reserved by a slow writer: skip them at once.
                        if broker.configs.cachedOrDefault(topic).retentionMs != nil, state.partitions[partition].hole?.since == readAt,
                            let lowest = try await store.lowestOffset(topic: topic, partition: partition), lowest > from
                        {
                            state.skipDeleted(partition, below: lowest)
                            scheduleCommit()
                            progressed = true
                        } else {
                            schedule(at: deadline)
                        }
                    case .skipped(let range):
                        progressed = true
                        scheduleCommit()
                        logger.warning(
                            "skipped missing offsets after the gap timeout",
                            metadata: ["partition": "\(partition)", "offset": "\(range.lowerBound)", "through": "\(range.upperBound)"])
                        broker.audit(
                            kind: "gap.skipped", topic: topic,
                            fields: [
                                ("group", group.map(JSONValue.string) ?? .null), ("partition", .int(partition)), ("offset", .int(range.lowerBound)),
                                ("through", .int(range.upperBound)),
                            ])
                    }
                } catch {
                    logger.warning("read failed; retrying", metadata: ["error": "\(error)"])
                    retryAfterError = true
                    schedule(at: now + 500)
                }
            }
            if !progressed { break }
        }
        if let due = commitDue, due <= now { await flushCommits() }
        if timer == nil { scheduleTimer() } else if let due = commitDue { schedule(at: due) }
    }

    /// New deliveries add deadlines; only an earlier one needs the timer moved. (Acks only
    /// remove deadlines: the timer then fires early and everything is recomputed.)
    func noteDeadlines(of deliveries: [GroupState.Delivery]) {
        guard group != nil, !deliveries.isEmpty else { return }
        var shortest = Int64.max
        var seen: Set<MemberID> = []
        for delivery in deliveries where seen.insert(delivery.member).inserted {
            shortest = min(shortest, state.members[delivery.member]?.ackTimeoutMs ?? shortest)
        }
        if shortest < .max { schedule(at: now + shortest) }
    }

    /// Read ahead in batches: the buffer is bounded by `GroupState.bufferLimit`, so a group
    /// that acks one message at a time still reads hundreds per store round trip.
    func readLimit() -> Int { 256 }

    func send(_ deliveries: [GroupState.Delivery]) {
        guard !deliveries.isEmpty else { return }
        for delivery in deliveries {
            guard let connection = connections[delivery.member] else { continue }
            let event = delivery.event
            let frame = ServerFrame.message(
                topic: topic, partition: event.partition, group: group, offset: event.offset, attempt: delivery.attempt,
                envelope: event.envelopeJSON)
            let pending = connection.send(frame)
            if group == nil && pending > settings.ephemeralQueueLimit {
                connection.close(
                    code: 1008, reason: "slow consumer: more than \(settings.ephemeralQueueLimit) messages queued", discardQueued: true)
            }
        }
        broker.metrics.delivered(topic: topic, count: deliveries.count)
    }

    // MARK: Commits and timers

    func scheduleCommit() {
        guard group != nil, commitDue == nil else { return }
        commitDue = now + settings.commitIntervalMs
    }

    func flushCommits() async {
        commitDue = nil
        guard let group else { return }
        for partition in state.dirtyPartitions {
            let committed = state.partitions[partition].committed
            let epoch = state.partitions[partition].epoch
            do {
                try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: committed, epoch: epoch)
                state.partitions[partition].persisted = committed
                if let stored = storedAttempts[partition], stored.contains(where: { $0 <= committed }) {
                    try? await store.clearAttempts(topic: topic, partition: partition, group: group, upTo: committed)
                    storedAttempts[partition] = stored.filter { $0 > committed }
                }
            } catch let error as BrokerError where error.code == .fenced {
                // Another replica holds this partition now: stop delivering it at once.
                logger.warning("commit refused (fenced); giving the partition up", metadata: ["partition": "\(partition)", "epoch": "\(epoch)"])
                state.disown(partition: partition)
                dispatcher.signalCoordinator.yield(.lost(partition: partition, epoch: epoch))
            } catch {
                logger.warning("commit failed; will retry", metadata: ["error": "\(error)"])
                scheduleCommit()
            }
        }
    }

    func scheduleTimer() {
        var deadline = state.nextDeadline()
        if let due = commitDue { deadline = min(deadline ?? due, due) }
        guard let deadline else { return }
        schedule(at: deadline)
    }

    func schedule(at deadline: Int64) {
        if let current = timerDeadline, current <= deadline, timer != nil { return }
        timer?.cancel()
        timerDeadline = deadline
        let delay = max(0, deadline - now)
        let wake = self.wake
        timer = Task {
            try? await Task.sleep(for: .milliseconds(delay))
            guard !Task.isCancelled else { return }
            wake(.tick)
        }
    }

    // MARK: Stats

    func snapshot() -> [GroupDispatcher.PartitionStats] {
        let now = self.now
        let maxInflight = state.members.values.reduce(0) { $0 + $1.maxInflight }
        return state.partitions.map { partition in
            GroupDispatcher.PartitionStats(
                partition: partition.index,
                committed: partition.committed,
                highWatermark: partition.highWatermark,
                inflight: partition.inflight.count,
                maxInflight: maxInflight,
                oldestUnackedMs: partition.inflight.values.map(\.deliveredAt).min().map { now - $0 },
                redeliveries: partition.redeliveries,
                deadLetters: partition.deadLetters,
                connections: state.members.count,
                epoch: partition.epoch,
                owned: partition.owned)
        }
    }
}
