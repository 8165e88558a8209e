import Foundation
import Logging
import Models
import NIOSSL
import Synchronization

/// A connection to a StreamBroker over its WebSocket protocol (SPEC §5, §13): confirmed,
/// idempotent publishes and credit-driven subscriptions that survive reconnects.
///
/// ```swift
/// let client = StreamBrokerClient()  // BUS_URL, else ws://127.0.0.1:7070/ws
/// try await client.connect()
/// let stored = try await client.publish(topic: "orders.created", key: "cust-7", payload: Order(n: 1))
/// for try await message in try await client.subscribe(topic: "orders.created", group: "billing") {
///     print(message.offset, message.payload.string)
///     message.ack()
/// }
/// await client.close()
/// ```
///
/// A broker with `BUS_AUTH` set wants a credential: pass `token`, sent as
/// `Authorization: Bearer <token>` on the WebSocket upgrade. A `wss://` URL uses TLS, with the
/// system's trust roots unless `tls` says otherwise (for a broker with a private CA:
/// `tls: try .trusting(caFile: "ca.pem")`).
///
/// When the connection drops, the client reconnects with exponential backoff and jitter,
/// sends again every publish not yet confirmed (with the same id, so the broker stores it once
/// and answers `duplicate: true`) and every subscription.
///
/// - Important: All methods may be called from any task; the state is guarded by one `Mutex`
///   and nothing blocks while holding it.
public final class StreamBrokerClient: Sendable {
    /// Where and how to connect.
    public struct Configuration: Sendable {
        /// The WebSocket URL of the broker's `/ws` endpoint.
        public var url: String
        /// Sent as `Authorization: Bearer <token>` on the WebSocket upgrade when set.
        public var token: String?
        /// TLS for a `wss://` URL (ignored for `ws://`); nil: the defaults of swift-nio-ssl's
        /// `TLSConfiguration.makeClientConfiguration()`: the system's trust roots, the host
        /// name checked against the certificate.
        ///
        /// A `wss://` URL may name the broker by an IP address: then no server name (SNI) is
        /// sent and the certificate must name the address (``StreamBrokerClient/lastConnectionError``
        /// says when it does not).
        public var tls: TLSConfiguration?
        /// The first reconnect delay; it doubles after each failed attempt, up to `maxBackoff`.
        public var initialBackoff: Duration
        public var maxBackoff: Duration
        /// The largest frame the client sends or accepts.
        public var maxFrameBytes: Int
        /// How long a connection attempt may take (TCP, TLS and the WebSocket upgrade) before it
        /// is given up and tried again.
        public var connectTimeout: Duration
        /// How often to ping the broker; a ping unanswered by the next one closes the connection
        /// (a frozen broker or a dead network path is noticed). Nil: no pings.
        public var pingInterval: Duration?

        /// `BUS_URL` from the environment, else `ws://127.0.0.1:7070/ws`.
        public static var defaultURL: String {
            ProcessInfo.processInfo.environment["BUS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "ws://127.0.0.1:7070/ws"
        }

        public init(
            url: String = Configuration.defaultURL, token: String? = nil, tls: TLSConfiguration? = nil, initialBackoff: Duration = .milliseconds(100),
            maxBackoff: Duration = .seconds(10), maxFrameBytes: Int = 16 << 20, pingInterval: Duration? = .seconds(30),
            connectTimeout: Duration = .seconds(10)
        ) {
            self.url = url
            self.token = token
            self.tls = tls
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
            self.maxFrameBytes = maxFrameBytes
            self.pingInterval = pingInterval
            self.connectTimeout = connectTimeout
        }
    }

    public let configuration: Configuration
    let logger: Logger
    let state = Mutex(ClientState())

    /// Creates a client; nothing happens until ``connect()``.
    public init(configuration: Configuration = Configuration(), logger: Logger = Logger(label: "streambroker.client")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Creates a client for `url` (default `BUS_URL`, else `ws://127.0.0.1:7070/ws`) with an optional token.
    public convenience init(url: String? = nil, token: String? = nil, logger: Logger = Logger(label: "streambroker.client")) {
        self.init(configuration: Configuration(url: url ?? Configuration.defaultURL, token: token), logger: logger)
    }

    /// Why the last connection attempt failed (a refused TCP connection, a TLS handshake that
    /// failed, an upgrade the broker refused), or nil: what to report when ``connect()`` waits
    /// too long.
    public var lastConnectionError: (any Error)? {
        state.withLock { $0.lastConnectionError }
    }

    /// Starts the connection loop and waits for the first connection.
    ///
    /// The loop retries with backoff until it connects, so this waits as long as the broker is
    /// unreachable; cancel the calling task to give up. Publishes and subscriptions made before
    /// the connection opens are sent when it does.
    public func connect() async throws {
        let id = try state.withLock { state -> Int in
            guard !state.closed else { throw StreamBrokerClientError.closedClient }
            if state.loop == nil { state.loop = Task { await self.runLoop() } }
            return state.makeID()
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                state.withLock { state in
                    if state.closed {
                        continuation.resume(throwing: StreamBrokerClientError.closedClient)
                    } else if state.connection != nil {
                        continuation.resume()
                    } else if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else {
                        state.connectWaiters[id] = continuation
                    }
                }
            }
        } onCancel: {
            state.withLock { $0.connectWaiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    /// Closes the connection and stops reconnecting. Unconfirmed publishes fail with
    /// ``StreamBrokerClientError/Code/closed``; subscriptions end after their buffered messages.
    ///
    /// Frames already queued (acks included) are written and the close handshake is sent first,
    /// for at most `closeGrace`; after that the connection is dropped.
    public func close(closeGrace: Duration = .seconds(2)) async {
        let (loop, connected) = state.withLock { state -> (Task<Void, Never>?, Bool) in
            state.closed = true
            state.connection?.outbound.close()
            return (state.loop, state.connection != nil)
        }
        if let loop, connected { await Self.wait(for: loop, atMost: closeGrace) }
        loop?.cancel()
        // Cancelling ends an attempt that waits for its TCP connection or upgrade answer (its
        // socket is closed), but do not let `close()` hang should anything still hold it.
        if let loop { await Self.wait(for: loop, atMost: closeGrace) }
        let (publishes, waiters, wake) = state.withLock { state in
            state.connection?.outbound.abort()
            state.connection = nil
            let publishes = state.publishes.values.map(\.continuation)
            state.publishes = [:]
            let waiters = Array(state.connectWaiters.values)
            state.connectWaiters = [:]
            var wake: [() -> Void] = []
            for id in state.subscriptions.keys {
                wake += Self.end(&state.subscriptions[id]!, .success(()))
            }
            return (publishes, waiters, wake)
        }
        let error = StreamBrokerClientError.closedClient
        for continuation in publishes { continuation.resume(throwing: error) }
        for continuation in waiters { continuation.resume(throwing: error) }
        for action in wake { action() }
    }

    /// Waits until `task` ends or `limit` passes, whichever is first; a task still running
    /// then is left behind (unstructured, so nothing waits for it).
    static func wait(for task: Task<Void, Never>, atMost limit: Duration) async {
        let done = Mutex(false)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finish = { @Sendable in
                let first = done.withLock { done in
                    defer { done = true }
                    return !done
                }
                if first { continuation.resume() }
            }
            Task {
                await task.value
                finish()
            }
            Task {
                try? await Task.sleep(for: limit)
                finish()
            }
        }
    }

    // MARK: Publishing

    /// Publishes a JSON payload and waits for the broker's confirmation.
    ///
    /// Many publishes may be in flight at once. A publish not confirmed when the connection
    /// drops is sent again after the reconnect with the same id, so it is stored once.
    /// - Parameters:
    ///   - id: The event id; when nil, a new time-ordered UUIDv7 (the broker's dedup index then
    ///     grows at its end, which costs it far less I/O than random ids).
    /// - Throws: ``StreamBrokerClientError`` with the broker's code when the broker refuses it,
    ///   or `.closed` when the client closes first; `CancellationError` when the task is cancelled
    ///   (the event may still be stored).
    @discardableResult
    public func publish(
        topic: String, key: String? = nil, headers: [String: String] = [:], payload: RawJSON, id: String? = nil
    ) async throws -> Published {
        let eventID = id ?? UUIDv7.make()
        let number = state.withLock { $0.makeID() }
        var w = JSONObjectWriter(capacity: payload.bytes.count + 192)
        w.string("type", "PUBLISH")
        w.string("topic", topic)
        w.optionalString("key", key)
        if !headers.isEmpty { w.raw("headers", Headers(headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).jsonBytes) }
        w.raw("payload", payload.bytes)
        w.string("id", eventID)
        w.string("rid", "p\(number)")
        let frame = w.finish()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Published, any Error>) in
                state.withLock { state in
                    if let refusal = state.refusal {
                        continuation.resume(throwing: refusal)
                    } else {
                        state.publishes[number] = .init(frame: frame, continuation: continuation)
                        state.send(frame)
                    }
                }
            }
        } onCancel: {
            state.withLock { $0.publishes.removeValue(forKey: number) }?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Publishes a value encoded with `JSONEncoder` and waits for the broker's confirmation.
    @discardableResult
    public func publish<Payload: Encodable>(
        topic: String, key: String? = nil, headers: [String: String] = [:], payload: Payload, id: String? = nil,
        encoder: JSONEncoder = JSONEncoder()
    ) async throws -> Published {
        let bytes: Data
        do {
            bytes = try encoder.encode(payload)
        } catch {
            throw StreamBrokerClientError(.encoding, "the payload could not be encoded: \(error)")
        }
        return try await publish(topic: topic, key: key, headers: headers, payload: RawJSON(trusted: Array(bytes)), id: id)
    }

    // MARK: Sending

    /// Sends a frame if the connection it belongs to is still the current one.
    func send(_ frame: [UInt8], onGeneration generation: Int) {
        state.withLock { state in
            guard state.connection?.generation == generation else { return }
            state.send(frame)
        }
    }

    /// Ends a subscription; returns what wakes its waiting iterator or `subscribe` call.
    static func end(_ subscription: inout SubscriptionState, _ result: Result<Void, any Error>) -> [() -> Void] {
        guard subscription.end == nil else { return [] }
        subscription.end = result
        var actions: [() -> Void] = []
        if let ready = subscription.ready {
            subscription.ready = nil
            let error: any Error
            switch result {
            case .success: error = StreamBrokerClientError.closedClient
            case .failure(let failure): error = failure
            }
            actions.append { ready.resume(throwing: error) }
        }
        if let waiter = subscription.waiter {
            subscription.waiter = nil
            switch result {
            case .success: actions.append { waiter.resume(returning: nil) }
            case .failure(let error): actions.append { waiter.resume(throwing: error) }
            }
        }
        return actions
    }
}
