import Models

/// The messages of one subscription, as an `AsyncSequence`; taking a message grants the broker
/// a credit, so a consumer that stops iterating holds at most its window.
///
/// ```swift
/// let orders = try await client.subscribe(topic: "orders.created", group: "billing", maxInflight: 16)
/// for try await message in orders {
///     try await handle(message)
///     message.ack()
/// }
/// ```
///
/// The sequence ends (returns nil) after ``unsubscribe()`` or ``StreamBrokerClient/close()``,
/// and throws ``StreamBrokerClientError`` when the broker refuses the subscription after a reconnect.
///
/// - Important: Iterate a subscription from one task at a time.
public struct Subscription: AsyncSequence, Sendable {
    public typealias Element = Message

    let client: StreamBrokerClient
    let id: Int
    public let topic: String
    public let group: String?

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: StreamBrokerClient
        let id: Int

        public mutating func next() async throws -> Message? {
            try await client.nextMessage(subscription: id)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: client, id: id)
    }

    /// Ends the subscription: the broker stops delivering, the sequence ends after its buffered
    /// messages, and a group's unacked messages go back to the group.
    public func unsubscribe() {
        client.unsubscribe(id)
    }

    /// Messages received and not yet taken by the iterator.
    var bufferedCount: Int {
        client.state.withLock { $0.subscriptions[id]?.buffer.count ?? 0 }
    }
}

extension StreamBrokerClient {
    /// Subscribes to a topic and waits for the broker's `SUBSCRIBED`.
    ///
    /// With a `group`, each message goes to one member of the group until it is acked; without,
    /// the subscription is an ephemeral tail (nothing to ack). After a reconnect, the client sends
    /// the subscription again: a group resumes at its committed position; a tail resumes after
    /// the last offset it received (see the note on several partitions in the README).
    /// - Parameters:
    ///   - from: Where a new group (or a tail) starts; default `latest`.
    ///   - maxInflight: The broker's `max_inflight`: for a group, the most unacked messages. Default 32.
    ///   - filter: Key and/or header equality; other events are skipped for the group.
    ///   - window: The most messages delivered and not yet taken by the iterator (the `FLOW`
    ///     credits); default `maxInflight`.
    ///   - limit: The most messages to take; the sequence ends after the last, and the broker is
    ///     never granted credits for more (nothing extra is delivered and returned unacked).
    /// - Throws: ``StreamBrokerClientError`` with the broker's code when the broker refuses it;
    ///   `.alreadySubscribed` when this client already subscribes to the same topic and group.
    public func subscribe(
        topic: String, group: String? = nil, from: StartPosition? = nil, maxInflight: Int = 32,
        filter: SubscriptionFilter = SubscriptionFilter(), window: Int? = nil, limit: Int? = nil
    ) async throws -> Subscription {
        let maxInflight = max(1, min(maxInflight, Limits.maxInflight))
        let window = max(1, min(window ?? maxInflight, 1_000_000_000))
        let id = try state.withLock { state -> Int in
            guard !state.closed else { throw StreamBrokerClientError.closedClient }
            if state.subscriptions.values.contains(where: { $0.topic == topic && $0.group == group && $0.end == nil }) {
                throw StreamBrokerClientError(.alreadySubscribed, "topic '\(topic)' group '\(group ?? "(ephemeral)")'")
            }
            return state.makeID()
        }
        let subscription = SubscriptionState(
            topic: topic, group: group, from: from, maxInflight: maxInflight, window: window, filter: filter, limit: limit.map { max(1, $0) })
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                state.withLock { state in
                    if let refusal = state.refusal {
                        continuation.resume(throwing: refusal)
                    } else {
                        var subscription = subscription
                        subscription.ready = continuation
                        state.subscriptions[id] = subscription
                        for frame in state.subscriptions[id]!.openingFrames(id: id) { state.send(frame) }
                    }
                }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.subscriptions[id]?.ready = nil }
                return state.subscriptions[id]?.ready
            }?.resume(throwing: CancellationError())
            unsubscribe(id)
        }
        return Subscription(client: self, id: id, topic: topic, group: group)
    }

    func unsubscribe(_ id: Int) {
        let wake = state.withLock { state -> [() -> Void] in
            guard state.subscriptions[id] != nil else { return [] }
            if state.subscriptions[id]!.end == nil { state.send(state.subscriptions[id]!.unsubscribeFrame()) }
            let actions = Self.end(&state.subscriptions[id]!, .success(()))
            if state.subscriptions[id]!.buffer.isEmpty { state.subscriptions[id] = nil }
            return actions
        }
        for action in wake { action() }
    }

    func nextMessage(subscription id: Int) async throws -> Message? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message?, any Error>) in
                state.withLock { state in
                    guard state.subscriptions[id] != nil else { return continuation.resume(returning: nil) }
                    if let message = state.subscriptions[id]!.buffer.popFirst() {
                        Self.taken(&state, id)
                        continuation.resume(returning: message)
                    } else if let end = state.subscriptions[id]!.end {
                        state.subscriptions[id] = nil
                        switch end {
                        case .success: continuation.resume(returning: nil)
                        case .failure(let error): continuation.resume(throwing: error)
                        }
                    } else if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else {
                        state.subscriptions[id]!.waiter = continuation
                    }
                }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.subscriptions[id]?.waiter = nil }
                return state.subscriptions[id]?.waiter
            }?.resume(throwing: CancellationError())
        }
    }
}
