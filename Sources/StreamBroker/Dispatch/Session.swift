import Models
import Synchronization

/// One client connection's protocol state: its subscriptions, and where its frames go.
///
/// `handle` never blocks: publishes complete through the store's group commit, everything else
/// is an input to a dispatcher.
public final class Session: Sendable {
    public let connection: ClientConnection
    private let broker: Broker
    private let subscriptions = Mutex<[SubscriptionKey: GroupDispatcher]>([:])
    private let closed = Atomic<Bool>(false)
    private let authenticatedAs = Mutex<Principal?>(nil)

    struct SubscriptionKey: Hashable {
        let topic: String
        let group: String?
    }

    init(broker: Broker, connection: ClientConnection) {
        self.broker = broker
        self.connection = connection
    }

    /// Who the client is, once the gateway authenticated it (nil with `BUS_AUTH=none`): what
    /// it may do is checked from then on.
    public var principal: Principal? {
        get { authenticatedAs.withLock { $0 } }
        set { authenticatedAs.withLock { $0 = newValue } }
    }

    public func handle(_ frame: ClientFrame) {
        switch frame {
        case .publish(var request):
            let principal = self.principal
            do throws(RequestError) {
                try broker.authorizePublish(request, by: principal)
            } catch {
                connection.send(ServerFrame.error(error))
                return
            }
            request.principal = principal?.name
            // The confirmation needs only the rid: the closure does not keep the payload alive.
            let (connection, rid) = (self.connection, request.rid)
            broker.publish(request) { result in
                switch result {
                case .success(let stored):
                    connection.send(
                        ServerFrame.published(
                            topic: stored.event.topic, partition: stored.event.partition, offset: stored.event.offset,
                            id: stored.event.id, rid: rid, duplicate: stored.duplicate))
                case .failure(let error):
                    connection.send(ServerFrame.error(error))
                }
            }
        case .subscribe(let request):
            do throws(RequestError) {
                try broker.authorizeSubscribe(
                    topic: request.topic, group: request.group, reset: request.reset, by: principal, rid: request.rid)
            } catch {
                connection.send(ServerFrame.error(error))
                return
            }
            subscribe(request, retries: 1)
        case .unsubscribe(let topic, let group, let rid):
            let key = SubscriptionKey(topic: topic, group: group)
            guard let dispatcher = subscriptions.withLock({ $0.removeValue(forKey: key) }) else {
                return notSubscribed(topic: topic, group: group, rid: rid)
            }
            dispatcher.send(.leave(connection.id))
        case .ack(let ack):
            guard let dispatcher = lookup(topic: ack.topic, group: ack.group, rid: ack.rid) else { return }
            if ack.group != nil { dispatcher.send(.ack(partition: ack.partition, offset: ack.offset)) }
        case .nack(let ack, let reason, let delayMs):
            guard let dispatcher = lookup(topic: ack.topic, group: ack.group, rid: ack.rid) else { return }
            if ack.group != nil {
                dispatcher.send(.nack(partition: ack.partition, offset: ack.offset, reason: reason, delayMs: delayMs))
            }
        case .flow(let topic?, let group, let credits, let rid):
            guard let dispatcher = lookup(topic: topic, group: group, rid: rid) else { return }
            dispatcher.send(.flow(connection.id, credits: credits))
        case .flow(nil, _, let credits, let rid):
            let all = subscriptions.withLock { Array($0.values) }
            guard !all.isEmpty else {
                connection.send(ServerFrame.error(RequestError(.notFound, "this connection has no subscription to grant credits to", rid: rid)))
                return
            }
            for dispatcher in all { dispatcher.send(.flow(connection.id, credits: credits)) }
        case .auth:
            // Credentials are the gateway's (it answers AUTH before a session sees frames).
            break
        }
    }

    /// Hands a SUBSCRIBE to its dispatcher. An ephemeral dispatcher ends when its last
    /// subscriber leaves: one that ended just before is replaced by a new one.
    private func subscribe(_ request: SubscribeRequest, retries: Int) {
        let key = SubscriptionKey(topic: request.topic, group: request.group)
        let dispatcher = subscriptions.withLock { subscriptions -> GroupDispatcher in
            if let existing = subscriptions[key] { return existing }
            let dispatcher = broker.dispatcher(topic: request.topic, group: request.group)
            subscriptions[key] = dispatcher
            return dispatcher
        }
        if dispatcher.trySend(.subscribe(self, request)) { return }
        forget(topic: request.topic, group: request.group, serial: dispatcher.serial)
        if retries > 0 {
            subscribe(request, retries: retries - 1)
        } else {
            GroupDispatcher.abandon(.subscribe(self, request))
        }
    }

    private func lookup(topic: String, group: String?, rid: String?) -> GroupDispatcher? {
        let key = SubscriptionKey(topic: topic, group: group)
        if let dispatcher = subscriptions.withLock({ $0[key] }) { return dispatcher }
        notSubscribed(topic: topic, group: group, rid: rid)
        return nil
    }

    private func notSubscribed(topic: String, group: String?, rid: String?) {
        let target = group.map { "topic '\(topic)' group '\($0)'" } ?? "topic '\(topic)' (ephemeral)"
        connection.send(ServerFrame.error(RequestError(.notFound, "this connection is not subscribed to \(target)", rid: rid)))
    }

    /// Drops a subscription whose SUBSCRIBE failed.
    func forget(topic: String, group: String?, serial: UInt64) {
        subscriptions.withLock { subscriptions in
            let key = SubscriptionKey(topic: topic, group: group)
            if subscriptions[key]?.serial == serial { subscriptions[key] = nil }
        }
    }

    /// Ends every subscription: in-flight messages go back to their groups.
    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        broker.disconnected()
        let all = subscriptions.withLock { subscriptions -> [GroupDispatcher] in
            defer { subscriptions = [:] }
            return Array(subscriptions.values)
        }
        for dispatcher in all { dispatcher.send(.leave(connection.id)) }
    }
}
