import Logging
import Models

/// The reconnect loop, and what each connection sends on opening and does with inbound frames.
extension StreamBrokerClient {
    func runLoop() async {
        var failures = 0
        let options = BrokerSocket.Options(
            maxFrameBytes: configuration.maxFrameBytes, token: configuration.token, tls: TLSContextCache(configuration.tls),
            pingInterval: configuration.pingInterval,
            // A broker that misses pings will not answer a close either: do not wait long for it.
            closeTimeout: min(configuration.pingInterval ?? .seconds(5), .seconds(5)), connectTimeout: configuration.connectTimeout)
        while !Task.isCancelled {
            // The number of the connection this attempt opens (messages of another are ignored).
            let generation = state.withLock { state in
                state.generation += 1
                return state.generation
            }
            let attempt = ConnectionAttempt()
            let task = Task {
                do {
                    let socket = try await BrokerSocket.connect(to: configuration.url, options: options, logger: logger) { bytes in
                        self.handle(bytes, generation: generation)
                    }
                    // Given up on before it opened: close it; the loop has moved on.
                    guard attempt.open() else { return socket.abort() }
                    try await self.serve(socket, generation: generation)
                } catch {
                    logger.debug("connection to the broker ended", metadata: ["error": "\(error)"])
                    // A cancelled attempt (timed out, or the client closing) has nothing to tell.
                    if !(error is CancellationError) { state.withLock { $0.lastConnectionError = error } }
                }
            }
            await attempt.wait(for: task, timeout: configuration.connectTimeout)
            if attempt.abandoned && !Task.isCancelled {
                logger.debug("no answer to the WebSocket upgrade; trying again", metadata: ["url": "\(configuration.url)"])
                state.withLock {
                    $0.lastConnectionError = StreamBrokerClientError(
                        .timeout, "no answer from \(configuration.url) within \(configuration.connectTimeout) (connectTimeout)")
                }
            }
            let opened = state.withLock { state in
                defer { state.connectedSinceLastCheck = false }
                return state.connectedSinceLastCheck
            }
            failures = opened ? 0 : failures + 1
            if Task.isCancelled || state.withLock({ $0.closed }) { break }
            let base = min(configuration.maxBackoff, configuration.initialBackoff * (1 << min(failures, 20)))
            let delay = base * Double.random(in: 0.5...1.0)
            logger.info("reconnecting to the broker", metadata: ["delay": "\(delay)", "failures": "\(failures)"])
            try? await Task.sleep(for: delay)
        }
    }

    /// Uses an open socket until it closes (or the loop's task is cancelled, which closes it).
    private func serve(_ socket: BrokerSocket, generation: Int) async throws {
        opened(socket, generation: generation)
        defer { lost(generation) }
        try await withTaskCancellationHandler {
            try await socket.closed()
        } onCancel: {
            socket.abort()
        }
    }

    /// A connection opened: unconfirmed publishes and every subscription go out again, in order.
    private func opened(_ socket: BrokerSocket, generation: Int) {
        let waiters = state.withLock { state in
            state.connection = .init(generation: generation, outbound: socket)
            state.connectedSinceLastCheck = true
            for number in state.publishes.keys.sorted() { socket.send(state.publishes[number]!.frame) }
            for id in state.subscriptions.keys.sorted() where state.subscriptions[id]!.end == nil {
                for frame in state.subscriptions[id]!.openingFrames(id: id) { socket.send(frame) }
            }
            // Closed meanwhile: what was queued leaves, then the close handshake.
            if state.closed { socket.close() }
            let waiters = Array(state.connectWaiters.values)
            state.connectWaiters = [:]
            return waiters
        }
        logger.info("connected to the broker", metadata: ["url": "\(configuration.url)"])
        for waiter in waiters { waiter.resume() }
    }

    /// A connection closed. A group's buffered messages are dropped: the broker delivers them
    /// again (to this client after the reconnect, or to another member).
    private func lost(_ generation: Int) {
        state.withLock { state in
            guard let connection = state.connection, connection.generation == generation else { return }
            connection.outbound.abort()
            state.connection = nil
            for id in state.subscriptions.keys where state.subscriptions[id]!.group != nil {
                state.subscriptions[id]!.buffer.removeAll()
            }
        }
    }

    func handle(_ bytes: [UInt8], generation: Int) {
        let frame: InboundFrame
        do {
            frame = try InboundFrame(bytes)
        } catch {
            logger.warning("unreadable frame from the broker", metadata: ["error": "\(error)"])
            return
        }
        switch frame.type {
        case "PUBLISHED":
            guard let number = frame.requestNumber(prefix: "p"),
                let pending = state.withLock({ $0.publishes.removeValue(forKey: number) })
            else { return }
            pending.continuation.resume(
                returning: Published(
                    topic: frame.topic ?? "", partition: frame.partition ?? 0, offset: frame.offset ?? 0, id: frame.id ?? "",
                    duplicate: frame.duplicate))
        case "SUBSCRIBED":
            guard let id = frame.requestNumber(prefix: "s") else { return }
            let ready = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                defer { state.subscriptions[id]?.ready = nil }
                return state.subscriptions[id]?.ready
            }
            ready?.resume()
        case "ERROR":
            handleError(frame)
        case "MESSAGE":
            handleMessage(frame, generation: generation)
        default:
            logger.debug("frame ignored", metadata: ["type": "\(frame.type)"])
        }
    }

    private func handleError(_ frame: InboundFrame) {
        let code = frame.code.flatMap(ErrorCode.init(rawValue:)) ?? .internal
        let error = StreamBrokerClientError(.broker(code), frame.message ?? "")
        if let number = frame.requestNumber(prefix: "p") {
            state.withLock { $0.publishes.removeValue(forKey: number) }?.continuation.resume(throwing: error)
        } else if let id = frame.requestNumber(prefix: "s") {
            let (wake, retry) = state.withLock { state -> ([() -> Void], Int?) in
                guard let subscription = state.subscriptions[id], subscription.end == nil else { return ([], nil) }
                if subscription.ready == nil && code == .unavailable, let generation = state.connection?.generation {
                    // Sent again after a reconnect while the broker's store is not back yet: try again.
                    return ([], generation)
                }
                let actions = Self.end(&state.subscriptions[id]!, .failure(error))
                if subscription.ready != nil { state.subscriptions[id] = nil }
                return (actions, nil)
            }
            for action in wake { action() }
            if let retry { resubscribe(id, generation: retry) }
        } else if frame.requestNumber(prefix: "f") != nil {
            logger.debug("FLOW refused", metadata: ["error": "\(error)"])
        } else {
            logger.warning("error from the broker", metadata: ["error": "\(error)"])
        }
    }

    private func handleMessage(_ frame: InboundFrame, generation: Int) {
        guard let topic = frame.topic, let partition = frame.partition, let offset = frame.offset, let envelope = frame.envelope
        else { return }
        let message = Message(
            topic: topic, partition: partition, group: frame.group, offset: offset, attempt: frame.attempt ?? 1, id: envelope.id,
            ts: envelope.ts, key: envelope.key, headers: envelope.headers, payload: envelope.payload, client: self,
            generation: generation)
        let waiter = state.withLock { state -> CheckedContinuation<Message?, any Error>? in
            guard state.connection?.generation == generation,
                let id = state.subscriptions.first(where: { $0.value.topic == topic && $0.value.group == frame.group && $0.value.end == nil })?
                    .key,
                state.subscriptions[id]!.accept(partition: partition, offset: offset)
            else { return nil }
            if let waiter = state.subscriptions[id]!.waiter {
                state.subscriptions[id]!.waiter = nil
                Self.taken(&state, id)
                return waiter
            }
            state.subscriptions[id]!.buffer.append(message)
            return nil
        }
        waiter?.resume(returning: message)
    }

    /// Sends a subscription again on the same connection after a pause (the broker answered `unavailable`).
    private func resubscribe(_ id: Int, generation: Int) {
        logger.info("subscription refused as unavailable; trying again", metadata: ["rid": "s\(id)"])
        Task {
            try? await Task.sleep(for: configuration.initialBackoff * 5)
            state.withLock { state in
                guard state.connection?.generation == generation, state.subscriptions[id]?.end == nil else { return }
                for frame in state.subscriptions[id]!.openingFrames(id: id) { state.send(frame) }
            }
        }
    }

    /// The iterator took a message: owe the broker a credit, and grant the owed credits in batches.
    static func taken(_ state: inout ClientState, _ id: Int) {
        if let flow = state.subscriptions[id]!.take(id: id) { state.send(flow) }
    }
}
