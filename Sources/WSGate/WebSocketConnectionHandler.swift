import BrokerAuth
import Logging
import Models
import NIOCore
import StreamBroker
import Synchronization

/// One upgraded WebSocket connection, entirely on its channel's event loop: no task of its own.
///
/// Inbound: bytes are parsed into frames (``WebSocketFrameParser``), and each message goes to
/// the ``Session`` as it arrives. Outbound: the session's ``ClientConnection`` tells this
/// handler when frames are queued; they leave in one buffer per batch, headers and payloads
/// together, with one flush per event-loop turn, and only while the channel is writable (so
/// frames a slow client does not read stay queued, counted in ``ClientConnection/pending``).
/// Pings, the close handshake and their timers follow ``WebSocketLifecycle``.
///
/// It sits in front of the HTTP handlers that were left in the pipeline after the upgrade and
/// forwards them only `channelInactive` (which ends the connection's HTTP task).
final class WebSocketConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Bytes of frames taken from the connection for one write.
    static let batchBytes = 64 * 1024
    /// Batches written in one event-loop turn before the rest waits for the next turn.
    static let batchesPerTurn = 8

    private let session: Session
    private var connection: ClientConnection { session.connection }
    private let maxBadFrames: Int
    private let logger: Logger
    private var parser: WebSocketFrameParser
    private var lifecycle = WebSocketLifecycle()
    /// Bytes of a frame not yet whole.
    private var partial: ByteBuffer?
    /// Set once the client's input is no longer read (a close frame, a protocol error).
    private var inputDone = false
    private var badFrames: [ContinuousClock.Instant] = []
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    private var drainScheduled = false
    private var needsFlush = false
    /// Authentication (SPEC §12): nil gate with `BUS_AUTH=none`.
    private let gate: AuthGate?
    private var auth: ConnectionAuth
    private var authTimer: Scheduled<Void>?
    private let broker: Broker

    /// - Parameter principal: who the upgrade request's `Authorization` header named.
    init(session: Session, broker: Broker, gate: AuthGate?, principal: Principal?, maxFrameBytes: Int, maxBadFrames: Int, logger: Logger) {
        self.session = session
        self.broker = broker
        self.gate = gate
        self.maxBadFrames = maxBadFrames
        self.logger = logger
        self.parser = WebSocketFrameParser(maxMessageBytes: maxFrameBytes)
        let now = gate?.authenticator.now() ?? 0
        auth = ConnectionAuth(
            enabled: gate != nil, principal: principal, closesAt: principal.flatMap { gate?.authenticator.closesAt($0) }, now: now,
            timeoutMs: gate?.settings.timeoutMs ?? 0)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        connection.attach(Sink(handler: NIOLoopBound(self, eventLoop: context.eventLoop), loop: LoopOutbound.of(context.eventLoop)))
        arm(.ping, context: context)
        if let principal = auth.principal { apply([.become(principal, previous: nil)], context: context) }
        armAuth(at: auth.initialTimer, context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end()
    }

    /// The socket is gone: the session ends (in-flight messages go back to their groups).
    private func end() {
        guard context != nil else { return }
        context = nil
        timer?.cancel()
        timer = nil
        authTimer?.cancel()
        authTimer = nil
        gate?.unregister(session, principal: auth.principal)
        connection.detach()
        connection.close(code: 1006, reason: "", discardQueued: true)
        session.close()
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !inputDone else { return }
        lifecycle.heardFromPeer()
        var incoming = unwrapInboundIn(data)
        do {
            if var buffer = partial {
                partial = nil
                buffer.writeBuffer(&incoming)
                try parse(&buffer, context: context)
                if buffer.readableBytes > 0 { partial = buffer }
            } else {
                try parse(&incoming, context: context)
                if incoming.readableBytes > 0 { partial = incoming }
            }
        } catch {
            logger.debug("closing a WebSocket that broke the protocol", metadata: ["reason": "\(error.reason)"])
            partial = nil
            inputDone = true
            connection.close(code: error.code, reason: error.reason, discardQueued: true)
        }
    }

    private func parse(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) throws(WebSocketViolation) {
        while !inputDone, let inbound = try parser.next(&buffer) {
            switch inbound {
            case .text(let bytes), .binary(let bytes):
                handle(bytes, context: context)
            case .ping(let payload):
                context.write(
                    wrapOutboundOut(WebSocketFrameEncoder.controlFrame(opcode: 0xA, payload: payload, allocator: context.channel.allocator)),
                    promise: nil)
                needsFlush = true
            case .pong:
                break
            case .close:
                inputDone = true
                switch lifecycle.peerCloseReceived() {
                case .closeSocket: context.close(promise: nil)
                default: connection.close(code: 1000, reason: "", discardQueued: true)
                }
            }
        }
    }

    /// One client message: a frame for the session (once authenticated), or an ERROR back.
    private func handle(_ bytes: [UInt8], context: ChannelHandlerContext) {
        // Once the broker is closing the connection, what the client still sends is not read.
        guard !connection.isClosing else { return }
        do throws(RequestError) {
            let frame = try ClientFrame.decode(bytes)
            if auth.passes(frame) {
                session.handle(frame)
            } else {
                apply(auth.received(frame), context: context)
            }
        } catch {
            connection.send(ServerFrame.error(error))
            countBadFrame()
        }
    }

    private func countBadFrame() {
        let now = ContinuousClock.now
        badFrames.removeAll { now - $0 > .seconds(10) }
        badFrames.append(now)
        if badFrames.count > maxBadFrames {
            logger.info("closing a connection that sent too many bad frames")
            connection.close(code: 1008, reason: "too many bad frames")
        }
    }

    // MARK: Authentication

    private func apply(_ actions: [ConnectionAuth.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .deliver(let frame):
                session.handle(frame)
            case .verify(let token, let rid):
                guard let gate else { continue }
                let authenticator = gate.authenticator
                context.eventLoop.makeFutureWithTask { await authenticator.authenticate(token) }
                    .assumeIsolated()
                    .whenSuccess { result in
                        guard self.context != nil else { return }
                        let verified = result.map { ($0, closesAt: authenticator.closesAt($0)) }
                        self.apply(self.auth.verified(verified, rid: rid), context: context)
                    }
            case .reply(let frame):
                connection.send(frame)
            case .refuse(let error, let bad):
                broker.refuse(error, principal: nil, address: context.channel.remoteAddress?.ipAddress, action: "authenticate", topic: nil)
                connection.send(ServerFrame.error(error))
                if bad { countBadFrame() }
            case .become(let principal, let previous):
                session.principal = principal
                gate?.register(session, principal: principal, previous: previous)
            case .arm(let at):
                armAuth(at: at, context: context)
            case .close(let code, let reason):
                logger.debug("closing a WebSocket", metadata: ["reason": "\(reason)"])
                connection.close(code: code, reason: reason)
            }
        }
    }

    private func armAuth(at deadline: Int64?, context: ChannelHandlerContext) {
        authTimer?.cancel()
        authTimer = nil
        guard let deadline, let gate else { return }
        let delay = max(0, deadline - gate.authenticator.now())
        authTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(delay)) {
            guard self.context != nil else { return }
            self.authTimer = nil
            self.apply(self.auth.timerFired(now: gate.authenticator.now()), context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            // Graceful shutdown (the HTTP handlers behind this one must not see it: they would
            // close the socket without a close frame).
            connection.close(code: 1001, reason: "server shutting down")
        case let event as ChannelEvent where event == .inputClosed:
            // The client half-closed without a close frame: nothing more will come.
            context.close(promise: nil)
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("WebSocket connection failed", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        context.fireChannelInactive()
    }

    // MARK: Outbound

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain(context: context) }
    }

    /// Called on the event loop after the connection announced output.
    fileprivate func outboundReady() {
        guard let context, !drainScheduled else { return }
        drain(context: context)
    }

    /// Writes what the connection has queued while the channel takes it, then flushes once.
    private func drain(context: ChannelHandlerContext) {
        drainScheduled = false
        guard !lifecycle.closeSent, self.context != nil else { return }
        var batches = 0
        defer {
            if needsFlush {
                needsFlush = false
                context.flush()
            }
        }
        while context.channel.isWritable {
            guard batches < Self.batchesPerTurn else {
                // Let other connections on this loop have a turn.
                drainScheduled = true
                context.eventLoop.assumeIsolated().execute { self.drain(context: context) }
                return
            }
            switch connection.take(maxBytes: Self.batchBytes) {
            case .frames(let frames):
                batches += 1
                context.write(wrapOutboundOut(WebSocketFrameEncoder.textFrames(frames, allocator: context.channel.allocator)), promise: nil)
                // Handed to the channel: its buffer is bounded (nothing more is taken once it
                // passes the high watermark), so what a slow client leaves unread piles up in
                // the connection's queue, where `pending` sees it.
                connection.didWrite(frames.count)
                needsFlush = true
            case .close(let code, let reason):
                writeClose(code: code, reason: reason, context: context)
                return
            case .idle:
                return
            }
        }
        // Not writable: the frames wait for `channelWritabilityChanged`; a close request waits
        // behind them, but not forever.
        if connection.isClosing { apply(lifecycle.closeDelayed(), context: context) }
    }

    private func writeClose(code: UInt16, reason: String, context: ChannelHandlerContext) {
        let frame = WebSocketFrameEncoder.closeFrame(code: code, reason: reason, allocator: context.channel.allocator)
        needsFlush = false
        switch lifecycle.closeFrameWritten() {
        case .closeSocket:
            context.writeAndFlush(wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case let action:
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
            apply([action], context: context)
        }
    }

    // MARK: Timers

    private func apply(_ actions: [WebSocketLifecycle.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .sendPing:
                context.writeAndFlush(
                    wrapOutboundOut(WebSocketFrameEncoder.controlFrame(opcode: 0x9, payload: [], allocator: context.channel.allocator)), promise: nil)
            case .arm(let timer):
                arm(timer, context: context)
            case .requestClose:
                connection.close(code: 1000, reason: "", discardQueued: true)
            case .closeSocket:
                context.close(promise: nil)
            }
        }
    }

    private func arm(_ kind: WebSocketLifecycle.Timer, context: ChannelHandlerContext) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: WebSocketLifecycle.delay(kind)) {
            guard self.context != nil else { return }
            self.timer = nil
            self.apply(self.lifecycle.timerFired(), context: context)
        }
    }
}

/// The connection's announcement that output is ready, carried to the event loop.
private final class Sink: OutboundSink {
    let handler: NIOLoopBound<WebSocketConnectionHandler>
    let loop: LoopOutbound

    init(handler: NIOLoopBound<WebSocketConnectionHandler>, loop: LoopOutbound) {
        self.handler = handler
        self.loop = loop
    }

    func outboundReady() {
        loop.announce(handler)
    }
}

/// The connections of one event loop whose output is ready, written by one task of that loop:
/// an event fanned out to thousands of connections costs the loop one task, not one each.
///
/// Always a task of its own, also when announced on the loop: a reply to a frame read now
/// leaves with the others of this read, after `channelRead` returned.
final class LoopOutbound: Sendable {
    let eventLoop: any EventLoop
    /// Announced since the last run; a run is scheduled exactly when this is not empty.
    private let ready = Mutex<[NIOLoopBound<WebSocketConnectionHandler>]>([])
    private static let registry = Mutex<[ObjectIdentifier: LoopOutbound]>([:])

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The one of `eventLoop` (made on first use; event loops are few and live as long as the process).
    static func of(_ eventLoop: any EventLoop) -> LoopOutbound {
        registry.withLock { loops in
            if let known = loops[ObjectIdentifier(eventLoop)] { return known }
            let made = LoopOutbound(eventLoop: eventLoop)
            loops[ObjectIdentifier(eventLoop)] = made
            return made
        }
    }

    func announce(_ handler: NIOLoopBound<WebSocketConnectionHandler>) {
        let first = ready.withLock { ready -> Bool in
            defer { ready.append(handler) }
            return ready.isEmpty
        }
        if first { eventLoop.execute { self.run() } }
    }

    private func run() {
        let handlers = ready.withLock { ready -> [NIOLoopBound<WebSocketConnectionHandler>] in
            var taken: [NIOLoopBound<WebSocketConnectionHandler>] = []
            swap(&taken, &ready)
            return taken
        }
        for handler in handlers { handler.value.outboundReady() }
    }
}
