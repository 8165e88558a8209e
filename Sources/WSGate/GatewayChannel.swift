import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import StreamBroker

/// Where WebSocket connections go: the paths that upgrade and what serves an upgraded channel.
struct WebSocketEndpoint: Sendable {
    let paths: Set<String>
    let config: GatewayConfig
    let broker: Broker
    let logger: Logger

    /// A new connection's handler, with a new broker session.
    func makeHandler() -> WebSocketConnectionHandler {
        WebSocketConnectionHandler(
            session: broker.connect(), maxFrameBytes: config.maxFrameBytes, maxBadFrames: config.maxBadFrames, logger: logger)
    }
}

/// One accepted TCP connection: HTTP/1.1 served by Hummingbird's responder, and a WebSocket
/// upgrade on any of its requests (``WebSocketUpgradeSwitch``), served by a
/// ``WebSocketConnectionHandler`` on the event loop.
///
/// Pipeline: HTTP/1 encoder and decoder, the upgrade switch, then Hummingbird's HTTP parts
/// (codec to swift-http-types, connection state, the async channel its request loop reads).
/// After an upgrade the first three are replaced by the WebSocket handler; Hummingbird's
/// request loop then waits, idle, until the socket closes.
struct GatewayChannel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let webSocket: WebSocketEndpoint

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let encoder = HTTPResponseEncoder(configuration: .init())
            let decoder = ByteToMessageHandler(
                HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop, limitConfiguration: .init()))
            let webSocket = self.webSocket
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(encoder)
            try pipeline.addHandler(decoder)
            try pipeline.addHandler(
                WebSocketUpgradeSwitch(paths: webSocket.paths, encoder: encoder, decoder: decoder) { webSocket.makeHandler() })
            try pipeline.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try pipeline.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: value, logger: logger)
    }
}
