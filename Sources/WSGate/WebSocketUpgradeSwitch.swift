import Models
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Takes a WebSocket upgrade request out of the HTTP stream — the first request of a
/// connection or any later one on a kept-alive connection — and turns the channel into a
/// WebSocket: the 101 response, then the HTTP codec leaves the pipeline and a
/// ``WebSocketConnectionHandler`` takes the bytes (including any the client sent right behind
/// its request).
///
/// It sits between the HTTP/1 codec and Hummingbird's handlers, which never see the upgrade
/// request. A response still owed to an earlier request is written first. A WebSocket upgrade
/// it will not do (another path, a bad handshake) gets 400; an upgrade to another protocol
/// (`h2c`) is served as a plain request. Either way the connection then closes: the HTTP
/// decoder stops after any upgrade request, so the connection cannot go on.
final class WebSocketUpgradeSwitch: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case http
        /// An upgrade request arrived; `complete` once its end did.
        case upgradeRequested(HTTPRequestHead, complete: Bool)
        /// Upgraded or refused: whatever still passes through is not HTTP.
        case done
    }

    private var state = State.http
    /// An upgrade to another protocol was passed on as a plain request: close after its response.
    private var closeAfterResponses = false
    /// Requests handed to the HTTP handlers whose response has not ended yet.
    private var responsesOwed = 0
    private let paths: Set<String>
    private let encoder: HTTPResponseEncoder
    private let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    private let onUpgrade: (ChannelPipeline.SynchronousOperations) -> Void
    private let authenticate: (@Sendable (String?, String?) async -> Result<Principal, RequestError>)?
    private let makeHandler: (Principal?) -> any ChannelHandler
    /// Checks the handshake and computes `Sec-WebSocket-Accept` (its pipeline part is unused).
    private let handshake = NIOWebSocketServerUpgrader(
        shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
        upgradePipelineHandler: { channel, _ in channel.eventLoop.makeSucceededVoidFuture() })

    /// - Parameters:
    ///   - paths: the request paths that upgrade (`/ws`, `/`).
    ///   - encoder, decoder: the HTTP/1 codec, removed on upgrade.
    ///   - onUpgrade: called once the WebSocket handler is in place (to remove more handlers).
    ///   - authenticate: checks an `Authorization` header (value, peer address); nil: no
    ///     authentication. A request without the header upgrades unauthenticated; one whose
    ///     credential is refused gets 401.
    ///   - makeHandler: the handler that serves the upgraded connection, for the principal the
    ///     header named.
    init(
        paths: Set<String>, encoder: HTTPResponseEncoder, decoder: ByteToMessageHandler<HTTPRequestDecoder>,
        onUpgrade: @escaping (ChannelPipeline.SynchronousOperations) -> Void = { _ in },
        authenticate: (@Sendable (String?, String?) async -> Result<Principal, RequestError>)? = nil,
        makeHandler: @escaping (Principal?) -> any ChannelHandler
    ) {
        self.paths = paths
        self.encoder = encoder
        self.decoder = decoder
        self.onUpgrade = onUpgrade
        self.authenticate = authenticate
        self.makeHandler = makeHandler
    }

    /// Whether `head` asks to switch protocols (what makes the HTTP decoder stop after it).
    static func isUpgrade(_ head: HTTPRequestHead) -> Bool {
        head.headers.contains(name: "upgrade")
            && head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    static func isWebSocket(_ head: HTTPRequestHead) -> Bool {
        head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .done:
            context.fireChannelRead(data)
        case .upgradeRequested(let head, _):
            if case .end = unwrapInboundIn(data) {
                state = .upgradeRequested(head, complete: true)
                upgradeIfReady(context: context)
            }
        case .http:
            let part = unwrapInboundIn(data)
            if case .head(let head) = part {
                if Self.isUpgrade(head) {
                    guard Self.isWebSocket(head) else {
                        closeAfterResponses = true
                        responsesOwed += 1
                        context.fireChannelRead(data)
                        return
                    }
                    state = .upgradeRequested(head, complete: false)
                    return
                }
                responsesOwed += 1
            }
            context.fireChannelRead(data)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd: Bool
        if case .end = unwrapOutboundIn(data) { isEnd = true } else { isEnd = false }
        guard isEnd else { return context.write(data, promise: promise) }
        responsesOwed = max(0, responsesOwed - 1)
        if closeAfterResponses && responsesOwed == 0 {
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.cascade(to: promise)
            context.write(data, promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.write(data, promise: promise)
        upgradeIfReady(context: context)
    }

    private func upgradeIfReady(context: ChannelHandlerContext) {
        guard case .upgradeRequested(let head, complete: true) = state, responsesOwed == 0 else { return }
        state = .done
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        guard head.method == .GET, paths.contains(path) else {
            return refuse(context: context, version: head.version)
        }
        guard let authenticate, let header = head.headers.first(name: "authorization") else {
            return handshake(context: context, head: head, principal: nil)
        }
        let address = context.channel.remoteAddress?.ipAddress
        context.eventLoop.makeFutureWithTask { await authenticate(header, address) }
            .assumeIsolated()
            .whenSuccess { result in
                switch result {
                case .success(let principal):
                    self.handshake(context: context, head: head, principal: principal)
                case .failure:
                    self.refuse(context: context, version: head.version, status: .unauthorized)
                }
            }
    }

    private func handshake(context: ChannelHandlerContext, head: HTTPRequestHead, principal: Principal?) {
        let initial: HTTPHeaders = ["Upgrade": "websocket", "Connection": "Upgrade"]
        handshake.buildUpgradeResponse(channel: context.channel, upgradeRequest: head, initialResponseHeaders: initial)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let headers):
                    self.switchProtocols(context: context, head: head, headers: headers, principal: principal)
                case .failure:
                    self.refuse(context: context, version: head.version)
                }
            }
    }

    private func switchProtocols(context: ChannelHandlerContext, head: HTTPRequestHead, headers: HTTPHeaders, principal: Principal?) {
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .switchingProtocols, headers: headers))), promise: nil)
        do {
            let pipeline = context.pipeline.syncOperations
            try pipeline.addHandler(makeHandler(principal), position: .after(self))
            pipeline.removeHandler(encoder, promise: nil)
            // Bytes the decoder holds beyond the request reach the new handler when it leaves.
            pipeline.removeHandler(decoder, promise: nil)
            pipeline.removeHandler(context: context, promise: nil)
            onUpgrade(pipeline)
        } catch {
            context.close(promise: nil)
        }
    }

    private func refuse(context: ChannelHandlerContext, version: HTTPVersion, status: HTTPResponseStatus = .badRequest) {
        let head = HTTPResponseHead(version: version, status: status, headers: ["Connection": "close", "Content-Length": "0"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
