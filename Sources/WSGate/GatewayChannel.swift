import BrokerAuth
import Hummingbird
import HummingbirdCore
import Logging
import Models
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOSSL
import StreamBroker

/// Where WebSocket connections go: the paths that upgrade and what serves an upgraded channel.
struct WebSocketEndpoint: Sendable {
    let paths: Set<String>
    let config: GatewayConfig
    let broker: Broker
    let gate: AuthGate?
    let logger: Logger

    /// A new connection's handler, with a new broker session; `principal`: who the upgrade
    /// request's `Authorization` header named.
    func makeHandler(principal: Principal?) -> WebSocketConnectionHandler {
        WebSocketConnectionHandler(
            session: broker.connect(), broker: broker, gate: gate, principal: principal, maxFrameBytes: config.maxFrameBytes,
            maxBadFrames: config.maxBadFrames, logger: logger)
    }

    /// Checks the upgrade request's bearer token (nil when authentication is off); a refusal
    /// is counted and audited.
    var authenticate: (@Sendable (String?, String?) async -> Result<Principal, RequestError>)? {
        guard let gate else { return nil }
        let broker = self.broker
        return { header, address in
            let result: Result<Principal, RequestError>
            if let token = AuthGate.bearer(header) {
                result = await gate.authenticator.authenticate(token)
            } else {
                result = .failure(RequestError(.unauthorized, "Authorization must be 'Bearer <token>'"))
            }
            if case .failure(let error) = result {
                broker.refuse(error, principal: nil, address: address, action: "authenticate", topic: nil)
            }
            return result
        }
    }
}

/// One accepted TCP connection: HTTP/1.1 served by Hummingbird's responder, and a WebSocket
/// upgrade on any of its requests (``WebSocketUpgradeSwitch``), served by a
/// ``WebSocketConnectionHandler`` on the event loop.
///
/// Pipeline: with TLS (`BUS_TLS_CERT_FILE`), a `NIOSSLServerHandler` and a
/// ``TLSFailureHandler`` first, so HTTPS and wss:// share the port; then HTTP/1 encoder and decoder, the upgrade switch, Hummingbird's codec to
/// swift-http-types and connection state, then an ``HTTPGate``. Hummingbird's request loop
/// (an async channel and a task) starts only with the first HTTP request: a connection whose
/// first request is the upgrade — the usual WebSocket client — keeps no task and only the
/// WebSocket handler in its pipeline. After an upgrade on a later request the HTTP parts stay
/// behind the WebSocket handler, and the request loop waits, idle, until the socket closes.
struct GatewayChannel: ServerChildChannel, HTTPChannelHandler {
    struct Value: ServerChildChannelValue {
        let channel: any Channel
        /// What the connection turned into.
        let kind: EventLoopFuture<HTTPGate.Kind>
    }

    let responder: HTTPChannelHandler.Responder
    let webSocket: WebSocketEndpoint
    /// The server's TLS context; nil: plain text.
    let tls: NIOSSLContext?
    let logger: Logger

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let encoder = HTTPResponseEncoder(configuration: .init())
            let decoder = ByteToMessageHandler(
                HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop, limitConfiguration: .init()))
            let pipeline = channel.pipeline.syncOperations
            if let tls {
                try pipeline.addHandler(NIOSSLServerHandler(context: tls))
                try pipeline.addHandler(TLSFailureHandler(logger: self.logger))
            }
            let codec = HTTP1ToHTTPServerCodec(secure: tls != nil)
            let state = HTTPConnectionStateHandler(idleTimeout: nil, logger: logger)
            let gate = HTTPGate(promise: channel.eventLoop.makePromise())
            let webSocket = self.webSocket
            let upgradeSwitch = WebSocketUpgradeSwitch(
                paths: webSocket.paths, encoder: encoder, decoder: decoder,
                onUpgrade: { pipeline in
                    // Upgraded before any HTTP request: the HTTP parts go too.
                    guard gate.webSocketInstead() else { return }
                    pipeline.removeHandler(codec, promise: nil)
                    pipeline.removeHandler(state, promise: nil)
                    pipeline.removeHandler(gate, promise: nil)
                },
                authenticate: webSocket.authenticate,
                makeHandler: { principal in webSocket.makeHandler(principal: principal) })
            try pipeline.addHandlers([encoder, decoder, upgradeSwitch, codec, state, gate])
            return Value(channel: channel, kind: gate.kind)
        }
    }

    func handle(value: Value, logger: Logger) async {
        guard case .http(let asyncChannel) = try? await value.kind.get() else { return }
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}
