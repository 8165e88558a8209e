import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

/// Why a connection attempt opened no WebSocket (what ``StreamBrokerClient/lastConnectionError`` reports).
struct ConnectionFailure: Error, CustomStringConvertible {
    let description: String
}

/// The client's WebSocket connection to the broker: swift-nio's HTTP upgrade, frame codec and
/// aggregator, and one handler of ours on the channel's event loop (no task of its own).
///
/// Inbound messages are handed to `onMessage` on the event loop as they are read. Outbound
/// frames are queued by ``send(_:)`` from any thread; the ones queued before the loop gets to
/// them leave together, in one write and one flush (acks of a batch of messages, publishes
/// made at once), and only while the socket takes them.
final class BrokerSocket: Sendable {
    struct Options: Sendable {
        var maxFrameBytes: Int
        var token: String?
        /// The TLS context of `wss://` connections, made once for all attempts.
        var tls: TLSContextCache
        /// Ping this often; a ping unanswered when the next is due closes the socket.
        var pingInterval: Duration?
        /// How long to wait for the broker's answer to the close frame.
        var closeTimeout: Duration
        /// How long the TCP connection may take.
        var connectTimeout: Duration
    }

    let channel: any Channel
    private let outbox: Outbox
    private let handler: NIOLoopBound<BrokerSocketHandler>

    private init(channel: any Channel, outbox: Outbox, handler: NIOLoopBound<BrokerSocketHandler>) {
        self.channel = channel
        self.outbox = outbox
        self.handler = handler
    }

    /// Queues a frame (dropped once ``close()`` was asked).
    func send(_ frame: [UInt8]) {
        if outbox.push(frame) { wakeHandler() }
    }

    /// Writes what is queued, then the close frame; the socket closes when the broker answers
    /// it, or after the close timeout.
    func close() {
        if outbox.requestClose() { wakeHandler() }
    }

    /// Closes the socket at once.
    func abort() {
        channel.close(promise: nil)
    }

    /// Waits until the socket is closed; throws what broke it, if anything did.
    func closed() async throws {
        try? await channel.closeFuture.get()
        if let failure = outbox.failure { throw failure }
    }

    private func wakeHandler() {
        let handler = self.handler
        channel.eventLoop.execute { handler.value.drain() }
    }

    /// Connects to `url` (`ws://` or `wss://`) and upgrades to a WebSocket; returns once open.
    /// Cancelling the calling task closes a socket still waiting for the upgrade's answer.
    static func connect(
        to url: String, options: Options, logger: Logger, onMessage: @escaping @Sendable ([UInt8]) -> Void
    ) async throws -> BrokerSocket {
        let target = try Target(url)
        let sslContext: NIOSSLContext? = try target.secure ? options.tls.context() : nil
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: target.hostHeader)
        if let token = options.token { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.pathAndQuery, headers: headers)
        let outbox = Outbox()
        let connecting = Mutex<(any Channel)?>(nil)

        let maxFrameBytes = min(options.maxFrameBytes, Int(UInt32.max))
        let upgrade = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(TimeAmount(options.connectTimeout))
            .connect(host: target.host, port: target.port) { channel in
                connecting.withLock { $0 = channel }
                return channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOTypedWebSocketClientUpgrader<BrokerSocket?>(maxFrameSize: maxFrameBytes) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            let handler = BrokerSocketHandler(outbox: outbox, options: options, logger: logger, onMessage: onMessage)
                            try channel.pipeline.syncOperations.addHandlers([
                                NIOWebSocketFrameAggregator(
                                    minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: Int.max, maxAccumulatedFrameSize: maxFrameBytes),
                                handler,
                            ])
                            return BrokerSocket(channel: channel, outbox: outbox, handler: NIOLoopBound(handler, eventLoop: channel.eventLoop))
                        }
                    }
                    var configuration = NIOUpgradableHTTPClientPipelineConfiguration(
                        upgradeConfiguration: NIOTypedHTTPClientUpgradeConfiguration(
                            upgradeRequestHead: head, upgraders: [upgrader],
                            notUpgradingCompletionHandler: { channel in channel.eventLoop.makeSucceededFuture(nil) }))
                    configuration.leftOverBytesStrategy = .forwardBytes
                    if let sslContext {
                        let tls = try NIOSSLClientHandler(context: sslContext, serverHostname: target.serverName)
                        try channel.pipeline.syncOperations.addHandler(tls, position: .first)
                    }
                    return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: configuration)
                }
            }
        let socket: BrokerSocket?
        do {
            socket = try await withTaskCancellationHandler {
                try await upgrade.get()
            } onCancel: {
                connecting.withLock { $0 }?.close(promise: nil)
            }
        } catch {
            // swift-nio leaves the channel open after some failed upgrades (a 101 without the
            // right accept key, a parse error from a peer that stays): close it on every one.
            connecting.withLock { $0 }?.close(promise: nil)
            if Task.isCancelled { throw CancellationError() }
            throw describe(error, url: url, target: target)
        }
        guard let socket else {
            connecting.withLock { $0 }?.close(promise: nil)
            throw ConnectionFailure(description: "the broker at \(url) refused the WebSocket upgrade")
        }
        return socket
    }

    /// A failed upgrade in words a user can act on (the error itself when there are none).
    private static func describe(_ error: any Error, url: String, target: Target) -> any Error {
        let hint = target.secure ? "" : " (a TLS port? use wss://)"
        switch error {
        case let error as ChannelError where error == .inappropriateOperationForState || error == .ioOnClosedChannel || error == .eof:
            // The upgrade handler went with the channel: the broker closed it without an answer.
            return ConnectionFailure(description: "\(url) closed the connection without answering the WebSocket upgrade" + hint)
        case is HTTPParserError:
            return ConnectionFailure(description: "\(url) answered the WebSocket upgrade with something other than HTTP" + hint)
        case let error as NIOSSLExtraError where error == .failedToValidateHostname:
            // swift-nio-ssl's text names the expected host only when it was sent as the server name.
            return ConnectionFailure(description: "\(url): the broker's certificate does not name \(target.host)")
        case let error as NIOHTTPClientUpgradeError:
            return ConnectionFailure(description: "\(url) did not upgrade to a WebSocket: \(error)")
        default:
            return error
        }
    }

    /// What a `ws://` or `wss://` URL names.
    struct Target {
        var secure: Bool
        var host: String
        var port: Int
        var pathAndQuery: String
        var hostHeader: String
        /// The TLS server name (SNI): the host, unless it is an IP address, which SNI may not
        /// carry; then none is sent and the certificate is checked against the address.
        var serverName: String?

        init(_ url: String) throws {
            guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
                scheme == "ws" || scheme == "wss", var host = components.host, !host.isEmpty
            else {
                throw ConnectionFailure(description: "'\(url)' is not a ws:// or wss:// URL")
            }
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            secure = scheme == "wss"
            self.host = host
            port = components.port ?? (secure ? 443 : 80)
            let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
            pathAndQuery = components.percentEncodedQuery.map { "\(path)?\($0)" } ?? path
            let named = host.contains(":") ? "[\(host)]" : host
            hostHeader = components.port.map { "\(named):\($0)" } ?? named
            serverName = Self.isAddress(host) ? nil : host
        }

        /// Whether the resolver reads `host` as an address rather than a name: IPv4 in any of
        /// `inet_aton`'s forms (`127.0.0.1`, `127.1`), IPv6 with or without a zone (`fe80::1%eth0`).
        static func isAddress(_ host: String) -> Bool {
            var v4 = in_addr()
            var v6 = in6_addr()
            return inet_aton(host, &v4) != 0 || inet_pton(AF_INET6, String(host.prefix { $0 != "%" }), &v6) == 1
        }
    }
}

/// One `NIOSSLContext` for every connection attempt of a client (its trust roots are loaded
/// once, not on each reconnect), made on first use; a configuration that cannot be made into
/// one fails each attempt alike.
final class TLSContextCache: Sendable {
    private let configuration: TLSConfiguration
    private let made = Mutex<NIOSSLContext?>(nil)

    /// - Parameter configuration: nil: swift-nio-ssl's client defaults (the system's roots).
    init(_ configuration: TLSConfiguration?) {
        self.configuration = configuration ?? .makeClientConfiguration()
    }

    func context() throws -> NIOSSLContext {
        try made.withLock { made in
            if let made { return made }
            let context = try NIOSSLContext(configuration: configuration)
            made = context
            return context
        }
    }
}

/// The frames waiting for the event loop, shared by ``BrokerSocket`` (any thread) and its handler.
final class Outbox: Sendable {
    private struct State {
        var queued: [[UInt8]] = []
        /// The handler was woken and has not yet found the queue empty.
        var signalled = false
        var closeRequested = false
        var failure: (any Error)?
    }

    private let state = Mutex(State())

    /// Queues a frame; true when the handler must be woken.
    func push(_ frame: [UInt8]) -> Bool {
        state.withLock { state in
            guard !state.closeRequested else { return false }
            state.queued.append(frame)
            defer { state.signalled = true }
            return !state.signalled
        }
    }

    /// True the first time: the handler must be woken to send the close frame.
    func requestClose() -> Bool {
        state.withLock { state in
            guard !state.closeRequested else { return false }
            state.closeRequested = true
            state.signalled = true
            return true
        }
    }

    /// Everything queued; with nothing queued, whether a close was asked (and the handler is
    /// woken again by the next frame).
    func take() -> (frames: [[UInt8]], close: Bool) {
        state.withLock { state in
            if !state.queued.isEmpty {
                var taken: [[UInt8]] = []
                swap(&taken, &state.queued)
                return (taken, false)
            }
            state.signalled = false
            return ([], state.closeRequested)
        }
    }

    var failure: (any Error)? {
        get { state.withLock { $0.failure } }
        set { state.withLock { $0.failure = $0.failure ?? newValue } }
    }
}

/// The WebSocket's life on its event loop: messages in, batched frames out, pings, and the
/// close handshake (ours or the broker's).
final class BrokerSocketHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let outbox: Outbox
    private let onMessage: @Sendable ([UInt8]) -> Void
    private let pingInterval: TimeAmount?
    private let closeTimeout: TimeAmount
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var masks = MaskingKeys()
    private var awaitingPong = false
    private var closeSent = false
    private var timer: Scheduled<Void>?

    init(outbox: Outbox, options: BrokerSocket.Options, logger: Logger, onMessage: @escaping @Sendable ([UInt8]) -> Void) {
        self.outbox = outbox
        self.onMessage = onMessage
        self.pingInterval = options.pingInterval.map(TimeAmount.init)
        self.closeTimeout = TimeAmount(options.closeTimeout)
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        armPing(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        awaitingPong = false
        switch frame.opcode {
        case .text, .binary:
            onMessage(Array(frame.unmaskedData.readableBytesView))
        case .ping:
            write(.pong, data: frame.unmaskedData, context: context)
            context.flush()
        case .connectionClose:
            if closeSent {
                context.close(promise: nil)
            } else {
                // The broker ends the connection: answer with its code, then close.
                closeSent = true
                timer?.cancel()
                timer = nil
                var data = frame.unmaskedData
                let code = data.readInteger(as: UInt16.self) ?? 1000
                if code != 1000 {
                    let reason = data.readString(length: data.readableBytes) ?? ""
                    outbox.failure = ConnectionFailure(description: "the broker closed the connection: \(code) \(reason)")
                }
                var answer = context.channel.allocator.buffer(capacity: 2)
                answer.writeInteger(code)
                context.writeAndFlush(wrapOutboundOut(makeFrame(.connectionClose, data: answer)))
                    .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        default:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("WebSocket connection failed", metadata: ["error": "\(error)"])
        outbox.failure = error
        context.close(promise: nil)
    }

    /// Writes every queued frame while the socket takes them, with one flush; then the close
    /// frame if one was asked and nothing is left.
    func drain() {
        guard let context, !closeSent else { return }
        var wrote = false
        defer { if wrote { context.flush() } }
        while context.channel.isWritable {
            let (frames, close) = outbox.take()
            for bytes in frames {
                var buffer = context.channel.allocator.buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                write(.text, data: buffer, context: context)
            }
            wrote = wrote || !frames.isEmpty
            if close {
                sendClose(context: context)
                wrote = false
                return
            }
            if frames.isEmpty { return }
        }
    }

    private func sendClose(context: ChannelHandlerContext) {
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 16)
        data.writeInteger(UInt16(1000))
        data.writeString("client closed")
        write(.connectionClose, data: data, context: context)
        context.flush()
        arm(after: closeTimeout, context: context) { context in
            context.close(promise: nil)
        }
    }

    private func write(_ opcode: WebSocketOpcode, data: ByteBuffer, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(makeFrame(opcode, data: data)), promise: nil)
    }

    /// A frame of this client: masked (RFC 6455 §5.3).
    private func makeFrame(_ opcode: WebSocketOpcode, data: ByteBuffer) -> WebSocketFrame {
        WebSocketFrame(fin: true, opcode: opcode, maskKey: masks.next(), data: data)
    }

    private func armPing(context: ChannelHandlerContext) {
        guard let pingInterval else { return }
        arm(after: pingInterval, context: context) { [self] context in
            if awaitingPong {
                logger.debug("no answer to the last ping; closing the connection")
                outbox.failure = ConnectionFailure(description: "the broker did not answer a ping within \(pingInterval)")
                context.close(promise: nil)
                return
            }
            awaitingPong = true
            write(.ping, data: ByteBuffer(), context: context)
            context.flush()
            armPing(context: context)
        }
    }

    /// The one timer: the next ping, or the wait for the broker's close frame.
    private func arm(after delay: TimeAmount, context: ChannelHandlerContext, _ body: @escaping (ChannelHandlerContext) -> Void) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            timer = nil
            guard let context = self.context else { return }
            body(context)
        }
    }
}

/// Masking keys from the system's random source, 64 per read of it rather than one each.
struct MaskingKeys {
    private var generator = BufferedRandom()

    mutating func next() -> WebSocketMaskingKey {
        .random(using: &generator)
    }
}

/// A `RandomNumberGenerator` that reads the system's cryptographic source (`arc4random_buf`:
/// `getrandom` on Linux) 512 bytes at a time.
struct BufferedRandom: RandomNumberGenerator {
    private var words = [UInt64](repeating: 0, count: 64)
    private var index = 64

    mutating func next() -> UInt64 {
        if index == words.count {
            refill()
            index = 0
        }
        defer { index += 1 }
        return words[index]
    }

    private mutating func refill() {
        words.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
    }
}
