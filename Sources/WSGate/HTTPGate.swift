import HummingbirdCore
import NIOCore
import NIOHTTPTypes

/// Starts Hummingbird's request loop on a connection's first HTTP request, or reports that
/// the connection became a WebSocket (or closed) first.
final class HTTPGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart

    enum Kind: Sendable {
        case http(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case webSocket
        case closed
    }

    private var promise: EventLoopPromise<Kind>?
    let kind: EventLoopFuture<Kind>

    init(promise: EventLoopPromise<Kind>) {
        self.promise = promise
        self.kind = promise.futureResult
    }

    /// The connection upgraded: true when no HTTP request came before (the gate may go).
    func webSocketInstead() -> Bool {
        guard let promise else { return false }
        self.promise = nil
        promise.succeed(.webSocket)
        return true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let promise {
            self.promise = nil
            do {
                // Added behind this handler; it buffers the request until the loop reads it.
                let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                    wrappingChannelSynchronously: context.channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                promise.succeed(.http(asyncChannel))
            } catch {
                promise.succeed(.closed)
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let promise {
            self.promise = nil
            promise.succeed(.closed)
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let promise {
            self.promise = nil
            promise.succeed(.closed)
        }
    }
}
