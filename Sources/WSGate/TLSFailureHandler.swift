import Logging
import NIOCore
import NIOSSL

/// Sits right behind the `NIOSSLServerHandler`: a TLS failure (a plain-text client on the TLS
/// port, a failed handshake, a peer that drops the connection without `close_notify`) is no
/// fault of the broker's, so it is logged at debug and that socket is closed; the handlers
/// behind never see it.
final class TLSFailureHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let logger: Logger
    /// One line per connection: NIOSSL may report more than one error while it closes.
    private var reported = false

    init(logger: Logger) {
        self.logger = logger
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is NIOSSLError || error is BoringSSLError else {
            context.fireErrorCaught(error)
            return
        }
        if !reported {
            reported = true
            logger.debug(
                "TLS connection failed; closing it",
                metadata: ["error": "\(error)", "peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
        }
        context.close(promise: nil)
    }
}
