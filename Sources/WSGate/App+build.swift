import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import Models
import NIOCore
import NIOWebSocket
import Prometheus
import ServiceLifecycle
import StreamBroker

/// Builds the gateway: HTTP API and `/ws` on one port, in front of a ``Broker``.
/// - Parameter services: run with the application, before it (in-process tests pass the
///   broker here; the executable runs its services in its own group).
func buildApplication(
    config: GatewayConfig, broker: Broker, registry: PrometheusCollectorRegistry, logger: Logger, services: [any Service] = []
) -> some ApplicationProtocol {
    let router = Router(context: BasicWebSocketRequestContext.self)
    addHTTPRoutes(to: router, config: config, broker: broker, registry: registry)
    // `/ws` (SPEC §8), and `/`, where the sketch's client (`new WebSocket('ws://host:7070')`) connects.
    for path in ["ws", ""] {
        router.ws(RouterPath(path)) { inbound, outbound, context in
            try await serveWebSocket(inbound: inbound, outbound: outbound, config: config, broker: broker, logger: context.logger)
        }
    }
    var app = Application(
        router: router,
        server: .http1WebSocketUpgrade(
            webSocketRouter: router,
            configuration: .init(
                ws: .init(maxFrameSize: config.maxFrameBytes, autoPing: .enabled(timePeriod: .seconds(30)), closeTimeout: .seconds(2)))),
        configuration: .init(address: .hostname(config.host, port: config.port), serverName: "stream-broker"),
        logger: logger
    )
    app.addServices(services)
    return app
}

/// One WebSocket connection: a reader that decodes frames into the session, and a writer that
/// drains the connection's outbound queue into the socket.
func serveWebSocket(
    inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, config: GatewayConfig, broker: Broker, logger: Logger
) async throws {
    let session = broker.connect()
    let connection = session.connection
    defer { session.close() }
    enum Ended { case writer, reader, watchdog }
    try await withGracefulShutdownHandler {
        try await withThrowingTaskGroup(of: Ended.self) { group in
            group.addTask {
                // Writer: drains the outbound queue; ends after sending the close frame.
                while true {
                    switch await connection.next() {
                    case .frames(let frames):
                        for frame in frames {
                            try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(bytes: frame))))
                        }
                        connection.didWrite(frames.count)
                    case .close(let code, let reason):
                        // Cancelled: the reader failed, and the handler sends the close itself.
                        if !Task.isCancelled { try? await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: reason) }
                        return .writer
                    }
                }
            }
            group.addTask {
                // Reader: decodes frames into the session until the client ends or the broker closes.
                // A protocol error or a message over BUS_MAX_FRAME_BYTES throws: the group then
                // cancels the writer and the watchdog, and the handler closes with the code that
                // matches the error (1002, 1009).
                try await readFrames(inbound: inbound, session: session, config: config, logger: logger)
                connection.close(code: 1000, reason: "")
                return .reader
            }
            group.addTask {
                // A client that stopped reading must not keep a closing connection forever.
                await connection.closeRequested()
                try await Task.sleep(for: .seconds(5))
                return .watchdog
            }
            // The connection ends when the writer has sent the close frame (so a close code set
            // by the broker reaches the client), or when the watchdog gives up on it.
            while let ended = try await group.next() {
                if ended != .reader { break }
            }
            group.cancelAll()
        }
    } onGracefulShutdown: {
        connection.close(code: 1001, reason: "server shutting down")
    }
}

private func readFrames(inbound: WebSocketInboundStream, session: Session, config: GatewayConfig, logger: Logger) async throws {
    let connection = session.connection
    var badFrames: [ContinuousClock.Instant] = []
    for try await message in inbound.messages(maxSize: config.maxFrameBytes) {
        let bytes: [UInt8]
        switch message {
        case .text(let text): bytes = Array(text.utf8)
        case .binary(let buffer): bytes = Array(buffer.readableBytesView)
        }
        do throws(RequestError) {
            session.handle(try ClientFrame.decode(bytes))
        } catch {
            connection.send(ServerFrame.error(error))
            let now = ContinuousClock.now
            badFrames.removeAll { now - $0 > .seconds(10) }
            badFrames.append(now)
            if badFrames.count > config.maxBadFrames {
                logger.info("closing a connection that sent too many bad frames")
                connection.close(code: 1008, reason: "too many bad frames")
                return
            }
        }
        if connection.isClosing { return }
    }
}
