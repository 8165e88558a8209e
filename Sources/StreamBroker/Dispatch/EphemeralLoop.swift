import Logging
import Models

/// The run loop of a topic's ephemeral subscriptions: one per topic (not one per subscriber),
/// driving an ``EphemeralState`` — it turns inputs into its events, sends the frames it
/// decides, reads from the store for subscribers that are behind, and arms the timer. An idle
/// subscriber costs no task, timer or mailbox of its own.
final class EphemeralLoop<C: Clock> where C.Duration == Duration {
    typealias MemberID = ClientConnection.ID

    let topic: String
    let dispatcher: GroupDispatcher
    let broker: Broker
    let store: any EventStore
    let settings: BrokerSettings
    let logger: Logger
    let wake: @Sendable (GroupDispatcher.Input) -> Void
    let timer: DeadlineTimer<C>
    let start: C.Instant
    var state: EphemeralState
    var connections: [MemberID: ClientConnection] = [:]
    /// The topic's metrics, kept so that recording is no look-up.
    let instruments: BrokerMetrics.PerTopic
    /// Frames of the visit being sent (kept to reuse its storage).
    private var frames: [[UInt8]] = []
    /// Store reads and repeated visits in one pump, before inputs get their turn again.
    static var pumpBudget: Int { 64 }

    init(
        dispatcher: GroupDispatcher, broker: Broker, timer: DeadlineTimer<C>, wake: @escaping @Sendable (GroupDispatcher.Input) -> Void
    ) {
        self.dispatcher = dispatcher
        self.topic = dispatcher.topic
        self.broker = broker
        self.store = broker.store
        self.settings = broker.settings
        self.timer = timer
        self.start = timer.clock.now
        self.wake = wake
        instruments = broker.metrics.topic(dispatcher.topic)
        var logger = broker.logger
        logger[metadataKey: LogKey.topic] = "\(dispatcher.topic)"
        logger[metadataKey: LogKey.group] = "-"
        self.logger = logger
        state = EphemeralState(topic: dispatcher.topic, tuning: EphemeralState.Tuning(broker.settings))
    }

    /// Milliseconds since the loop started, on its clock: the state machine's time.
    var now: Int64 {
        start.duration(to: timer.clock.now).wholeMilliseconds
    }

    /// Handles inputs until stopped, or until its last subscriber left and the broker retired
    /// it. Returns the inputs it took and did not handle (after a stop).
    func run(_ inputs: Mailbox<GroupDispatcher.Input>) async -> [GroupDispatcher.Input] {
        while true {
            let batch: [GroupDispatcher.Input]
            if state.hasWork {
                // Visits are left from the last pump: take what arrived meanwhile, without waiting.
                await Task.yield()
                guard let ready = inputs.poll() else { return [] }
                batch = ready
            } else {
                guard let next = await inputs.next() else { return [] }
                batch = next
            }
            // One read of the high-water marks serves every SUBSCRIBE of the batch: it happens
            // after each of them arrived, so `latest` includes whatever was confirmed before.
            var marksRead = false
            for (index, input) in batch.enumerated() {
                if case .stop(let done) = input {
                    done?.resume()
                    return Array(batch[(index + 1)...])
                }
                await handle(input, marksRead: &marksRead)
            }
            await pump()
            if state.subscribers.isEmpty && !state.hasWork && broker.retire(dispatcher) { return [] }
        }
    }

    // MARK: Inputs

    func handle(_ input: GroupDispatcher.Input, marksRead: inout Bool) async {
        switch input {
        case .subscribe(let session, let request):
            await subscribe(session, request, marksRead: &marksRead)
        case .leave(let id):
            connections[id] = nil
            state.remove(id)
        case .ack, .nack, .own:
            break
        case .flow(let id, let credits):
            state.flow(id, credits: credits)
        case .drained(let id):
            state.drained(id)
        case .appended(let events):
            state.appended(events)
        case .highWatermarks(let marks):
            if state.highWatermarksReceived(marks) { instruments.rescans.increment() }
        case .config(let config):
            if state.partitionCount > 0 { state.setPartitions(config.partitions) }
        case .reset(_, let reply):
            reply.resume(returning: .failure(BrokerError(.badRequest, "an ephemeral subscription has no position to reset")))
        case .snapshot(let reply):
            reply.resume(returning: [])
        case .disown(_, let reply):
            reply.resume()
        case .tick:
            state.tickReceived()
        case .stop:
            break
        }
    }

    private func subscribe(_ session: Session, _ request: SubscribeRequest, marksRead: inout Bool) async {
        let connection = session.connection
        do {
            try broker.checkACL(try await broker.configs.load(topic), principal: session.principal?.name, publishing: false, rid: request.rid)
            if !marksRead {
                let config = try await broker.configs.load(topic)
                state.setPartitions(config.partitions)
                let marks = try await store.highWatermarks(topic: topic, partitions: state.partitionCount)
                for (partition, mark) in marks.enumerated() { state.noteHighWatermark(partition, mark) }
                marksRead = true
            }
            var start: [Int64]?
            // A new subscriber starts at `from`; an existing one keeps its positions unless it
            // asks for a reset (SPEC §5).
            if state.subscribers[connection.id] == nil || request.reset {
                var positions: [Int64] = []
                for partition in 0..<state.partitionCount {
                    positions.append(
                        try await store.start(
                            of: request.from ?? .latest, topic: topic, partition: partition, highWatermark: state.highWatermarks[partition]))
                }
                start = positions
            }
            state.subscribe(connection.id, filter: request.filter, start: start)
            connections[connection.id] = connection
            connection.send(ServerFrame.subscribed(topic: topic, group: nil, rid: request.rid))
        } catch {
            // A connection that is already subscribed keeps its subscription as it was.
            if state.subscribers[connection.id] == nil { session.forget(topic: topic, group: nil, serial: dispatcher.serial) }
            connection.send(ServerFrame.error(RequestError(error, rid: request.rid)))
        }
    }

    // MARK: Visits

    /// Visits the queued subscribers: deliveries from the cache, and store reads for those
    /// behind, up to ``pumpBudget`` reads and repeated visits (the rest stays queued).
    func pump() async {
        var budget = Self.pumpBudget
        var delivered = 0
        while budget > 0, let id = state.nextVisit() {
            let visit = state.visit(id, frames: &frames)
            delivered += flush(to: id)
            switch visit {
            case .idle:
                break
            case .again:
                budget -= 1
                state.enqueue(id)
            case .read(let partition, let from, let limit):
                guard let connection = connections[id] else { break }
                if let level = state.pauseLevel(backlog: connection.pending, partition: partition, from: from) {
                    state.waitForDrain(id)
                    connection.whenDrained(to: level) { [wake] in wake(.drained(id)) }
                    break
                }
                budget -= 1
                let outcome: EphemeralState.ReadOutcome
                do {
                    let events = try await store.read(topic: topic, partition: partition, from: from, limit: limit)
                    outcome = state.readSucceeded(id, partition: partition, from: from, events: events, now: now, frames: &frames)
                    delivered += flush(to: id)
                } catch {
                    logger.warning("read failed; retrying", metadata: [LogKey.error: "\(error)"])
                    outcome = state.readFailed(id, now: now)
                }
                perform(outcome)
            }
        }
        if delivered > 0 { instruments.recordDelivered(delivered) }
    }

    /// Sends the frames of a visit; a subscriber with more than `ephemeralQueueLimit` queued is
    /// closed with 1008 (SPEC §6). Returns the number sent.
    private func flush(to id: MemberID) -> Int {
        guard !frames.isEmpty else { return 0 }
        defer { frames.removeAll(keepingCapacity: true) }
        guard let connection = connections[id] else { return 0 }
        for frame in frames where connection.send(frame) > settings.ephemeralQueueLimit {
            connection.close(code: 1008, reason: "slow consumer: more than \(settings.ephemeralQueueLimit) messages queued", discardQueued: true)
            state.closed(id)
            break
        }
        return frames.count
    }

    private func perform(_ outcome: EphemeralState.ReadOutcome) {
        switch outcome {
        case .none:
            break
        case .armTimer(let deadline):
            timer.arm(at: start.advanced(by: .milliseconds(deadline)))
        case .skipped(let partition, let range):
            logger.warning(
                "skipped missing offsets after the gap timeout",
                metadata: [LogKey.partition: "\(partition)", LogKey.offset: "\(range.lowerBound)", LogKey.through: "\(range.upperBound)"])
            broker.audit(
                kind: "gap.skipped", topic: topic,
                fields: [("group", .null), ("partition", .int(partition)), ("offset", .int(range.lowerBound)), ("through", .int(range.upperBound))])
        }
    }
}
