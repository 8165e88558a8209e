import DequeModule
import Models

/// Everything the client keeps between connections, guarded by the client's one `Mutex`.
struct ClientState {
    struct Connection {
        var generation: Int
        var outbound: BrokerSocket
    }

    struct PendingPublish {
        var frame: [UInt8]
        var continuation: CheckedContinuation<Published, any Error>
    }

    var closed = false
    var loop: Task<Void, Never>?
    var connection: Connection?
    var generation = 0
    /// Set when a connection opens; the reconnect loop reads and clears it to reset its backoff.
    var connectedSinceLastCheck = false
    /// Why the last connection attempt failed or the last connection ended.
    var lastConnectionError: (any Error)?
    var nextID = 0
    /// Publishes sent and not yet confirmed, by request number (the `rid` is `p<number>`).
    var publishes: [Int: PendingPublish] = [:]
    /// Subscriptions by request number (the `rid` is `s<number>`).
    var subscriptions: [Int: SubscriptionState] = [:]
    var connectWaiters: [Int: CheckedContinuation<Void, any Error>] = [:]

    /// Why a new request cannot wait for an answer now (the client is closed, or the calling
    /// task is cancelled), or nil: the one check publish and subscribe make under the lock.
    var refusal: (any Error)? {
        if closed { return StreamBrokerClientError.closedClient }
        if Task.isCancelled { return CancellationError() }
        return nil
    }

    mutating func makeID() -> Int {
        nextID += 1
        return nextID
    }

    /// Sends a frame on the current connection; false when there is none.
    @discardableResult
    func send(_ frame: [UInt8]) -> Bool {
        guard let connection else { return false }
        connection.outbound.send(frame)
        return true
    }
}

/// One subscription's local state: what to send again after a reconnect, the messages received
/// and not yet taken by the iterator, and the credits owed to the broker.
struct SubscriptionState {
    let topic: String
    let group: String?
    let from: StartPosition?
    let maxInflight: Int
    let window: Int
    let filter: SubscriptionFilter
    /// The most messages the iterator takes; then the sequence ends (nil: no end).
    let limit: Int?
    /// The last offset received per partition (ephemeral subscriptions resume after it).
    var lastSeen: [Int: Int64] = [:]
    var buffer: Deque<Message> = []
    var waiter: CheckedContinuation<Message?, any Error>?
    var ready: CheckedContinuation<Void, any Error>?
    /// Messages taken by the iterator since the last FLOW.
    var owed = 0
    /// Messages taken by the iterator in all.
    var taken = 0
    /// Credits granted on this connection and not yet spent by a message.
    var outstanding = 0
    /// Why the subscription ended (nil: it did not); `.success` ends the sequence quietly.
    var end: Result<Void, any Error>?

    var creditBatch: Int { max(1, window / 4) }

    /// The SUBSCRIBE and first FLOW for a connection: credits start again on each connection,
    /// the window less what is still buffered. The FLOW goes even with no credit: after it, the
    /// broker sends only against credits.
    mutating func openingFrames(id: Int) -> [[UInt8]] {
        owed = 0
        outstanding = 0
        let credits = grant(window - buffer.count)
        return [subscribeFrame(rid: "s\(id)"), flowFrame(credits: credits, id: id)]
    }

    /// The iterator took a message: ends the sequence at the limit, and returns a FLOW when the
    /// owed credits make a batch.
    mutating func take(id: Int) -> [UInt8]? {
        owed += 1
        taken += 1
        if let limit, taken >= limit {
            // Anything past the limit (none, as credits and max_inflight are capped) goes back to the broker.
            end = .success(())
            buffer.removeAll()
        }
        guard owed >= creditBatch else { return nil }
        let credits = grant(owed)
        owed = 0
        return credits > 0 ? flowFrame(credits: credits, id: id) : nil
    }

    /// Credits to grant: `wanted`, capped so that a subscription with a limit is never sent
    /// more messages than it will take.
    private mutating func grant(_ wanted: Int) -> Int {
        var credits = max(0, wanted)
        if let limit { credits = max(0, min(credits, limit - taken - buffer.count - outstanding)) }
        outstanding += credits
        return credits
    }

    /// Where to start when the subscription is sent again after a reconnect.
    ///
    /// A group sends its first `from` again: the broker applies it only when the group has no
    /// committed position (so a new group that never committed does not jump to `latest`).
    /// An ephemeral tail resumes after the last offset it received: with one partition exactly;
    /// with several, from the lowest "last offset + 1" over the partitions it has seen, dropping
    /// what it already received per partition (see ``accept(partition:offset:)``).
    var resumePosition: StartPosition? {
        guard group == nil, let lowest = lastSeen.values.min() else { return from }
        return .offset(lowest + 1)
    }

    /// Whether a received message is new (an ephemeral tail drops what it already received).
    mutating func accept(partition: Int, offset: Int64) -> Bool {
        if group == nil, let last = lastSeen[partition], offset <= last { return false }
        lastSeen[partition] = max(offset, lastSeen[partition] ?? 0)
        outstanding = max(0, outstanding - 1)
        return true
    }

    func subscribeFrame(rid: String) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 160)
        w.string("type", "SUBSCRIBE")
        w.string("topic", topic)
        w.optionalString("group", group)
        if let position = resumePosition { w.value("from", position.jsonValue) }
        // Capped by the limit too: the broker may deliver up to max_inflight before the first FLOW arrives.
        w.int("max_inflight", min(maxInflight, limit ?? maxInflight))
        if !filter.isEmpty {
            var members: [(String, JSONValue)] = []
            if let key = filter.key { members.append(("key", .string(key))) }
            if let header = filter.header { members.append(("header", .array([.string(header.name), .string(header.value)]))) }
            w.value("filter", .object(members))
        }
        w.string("rid", rid)
        return w.finish()
    }

    /// A FLOW frame; its `rid` (`f<id>`) marks an `ERROR` answering it (the subscription is
    /// gone on the broker, e.g. its SUBSCRIBE failed), which the client ignores.
    func flowFrame(credits: Int, id: Int) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 96)
        w.string("type", "FLOW")
        w.string("topic", topic)
        w.optionalString("group", group)
        w.int("credits", credits)
        w.string("rid", "f\(id)")
        return w.finish()
    }

    func unsubscribeFrame() -> [UInt8] {
        var w = JSONObjectWriter(capacity: 96)
        w.string("type", "UNSUBSCRIBE")
        w.string("topic", topic)
        w.optionalString("group", group)
        return w.finish()
    }
}
