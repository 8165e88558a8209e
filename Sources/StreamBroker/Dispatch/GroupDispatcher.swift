import Logging
import Models
import Synchronization

/// One consumer group of a topic on this replica, or all of the topic's ephemeral
/// subscriptions: its ``Mailbox`` of inputs (subscribes, acks, wake-ups from the change feed,
/// timer ticks) that ``DispatcherLoop`` (a group, driving a ``GroupState``) or
/// ``EphemeralLoop`` (driving an ``EphemeralState``) works through in batches.
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
        /// The loop's timer fired.
        case tick
        /// This ephemeral subscriber's queue drained (its reads were paused).
        case drained(MemberID)
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
    /// nil for the topic's ephemeral subscriptions.
    let group: String?
    private let inputs = Mailbox<Input>()
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
        /// The coordinator's own timer: time for the next round.
        case tick
        /// Shutting down: release every lease and end.
        case stop
    }

    /// Unique per dispatcher, for the broker's registry.
    let serial: UInt64

    init(topic: String, group: String?, serial: UInt64, broker: Broker) {
        self.serial = serial
        self.topic = topic
        self.group = group
        self.broker = broker
        (coordinatorSignals, signalCoordinator) = AsyncStream<CoordinatorSignal>.makeStream()
    }

    func disown(partition: Int) async {
        await withCheckedContinuation { send(.disown(partition: partition, $0)) }
    }

    func send(_ input: Input) {
        if case .ack = input, acksMayWait.load(ordering: .relaxed) {
            // The loop's next wake-up (a new event, the timer's sweep) takes it.
            _ = inputs.sendQuietly(input, wakeAt: Self.quietAckLimit)
            return
        }
        if !inputs.send(input) { Self.abandon(input) }
    }

    /// Set by the loop after each batch (``GroupState/acksMayWait``): acks are queued without
    /// waking it.
    let acksMayWait = Atomic<Bool>(false)
    /// Acks queued quietly past which the loop is woken anyway.
    static let quietAckLimit = 256

    /// Inputs queued past which new events from the change feed are not queued: the loop
    /// fell behind, and reads them by offset after the next high-water marks (the safety poll).
    static let appendedBacklogLimit = 4_096

    /// Hands newly stored events on from the change feed (on the store's thread); dropped
    /// when the loop is far behind — the feed may miss events, the poll finds them.
    func offer(_ events: [Event]) {
        _ = inputs.send(.appended(events), unlessQueued: Self.appendedBacklogLimit)
    }

    /// Queues an input; false (and nothing queued) once the dispatcher has ended.
    func trySend(_ input: Input) -> Bool { inputs.send(input) }

    /// Ends the dispatcher's mailbox if nothing is queued (an ephemeral dispatcher whose last
    /// subscriber left); false if an input arrived meanwhile.
    func finishIfIdle() -> Bool { inputs.finishIfEmpty() }

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

    /// Runs the dispatcher until it is stopped (or, ephemeral, its last subscriber left), on
    /// the continuous clock.
    func run() async { await run(clock: ContinuousClock()) }

    /// Runs the dispatcher with its timer on `clock`: the loop, and the timer as a child task
    /// that ends with it.
    func run<C: Clock>(clock: C) async where C.Duration == Duration {
        let timer = DeadlineTimer(clock: clock)
        var unhandled: [Input] = []
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [inputs] in await timer.run { inputs.send(.tick) } }
            if let group = self.group {
                unhandled = await DispatcherLoop(dispatcher: self, group: group, broker: broker, timer: timer).run(inputs)
            } else {
                let wake: @Sendable (Input) -> Void = { [inputs] in inputs.send($0) }
                unhandled = await EphemeralLoop(dispatcher: self, broker: broker, timer: timer, wake: wake).run(inputs)
            }
            timer.finish()
        }
        for input in unhandled + inputs.finish() { Self.abandon(input) }
    }
}
