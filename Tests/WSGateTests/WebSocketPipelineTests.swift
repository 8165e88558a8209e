import Logging
import Models
import NIOCore
import NIOEmbedded
import NIOHTTP1
import StreamBroker
import Testing

@testable import WSGate

/// The upgrade switch and the connection handler in an embedded channel: HTTP then WebSocket on
/// one connection, batching, backpressure, pings and close timers (the clock is the embedded
/// loop's, moved by hand).
@Suite("WebSocket pipeline")
struct WebSocketPipelineTests {
    /// Answers every HTTP request with `200 ok` (what Hummingbird's side does).
    final class Responder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "2"]))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok")))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    struct Harness {
        let channel: EmbeddedChannel
        let loop: EmbeddedEventLoop

        /// Everything written so far, as bytes.
        func output() throws -> [UInt8] {
            var bytes: [UInt8] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
            return bytes
        }

        func send(_ bytes: [UInt8]) throws {
            try channel.writeInbound(ByteBuffer(bytes: bytes))
            loop.run()
        }

        /// Server frames in `bytes`: (opcode, payload).
        static func frames(_ bytes: [UInt8]) -> [(UInt8, [UInt8])] {
            var out: [(UInt8, [UInt8])] = []
            var index = 0
            while index + 2 <= bytes.count {
                var length = Int(bytes[index + 1] & 0x7F)
                var start = index + 2
                if length == 126 {
                    length = Int(bytes[index + 2]) << 8 | Int(bytes[index + 3])
                    start = index + 4
                } else if length == 127 {
                    length = (0..<8).reduce(0) { $0 << 8 | Int(bytes[index + 2 + $1]) }
                    start = index + 10
                }
                out.append((bytes[index] & 0x0F, Array(bytes[start..<start + length])))
                index = start + length
            }
            return out
        }
    }

    static let upgrade = Array(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .utf8)

    func withPipeline(_ body: (Harness) throws -> Void) async throws {
        let store = SQLiteStore(location: .memory, durability: .normal, logger: Logger(label: "test.store"))
        let broker = Broker(store: store, logger: Logger(label: "test.broker"))
        try await broker.openStore()
        var config = GatewayConfig()
        config.maxFrameBytes = 4096
        config.maxBadFrames = 3
        let endpoint = WebSocketEndpoint(paths: ["/ws", "/"], config: config, broker: broker, gate: nil, logger: Logger(label: "test.gateway"))
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let encoder = HTTPResponseEncoder(configuration: .init())
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
        try channel.pipeline.syncOperations.addHandlers([
            encoder, decoder,
            WebSocketUpgradeSwitch(paths: endpoint.paths, encoder: encoder, decoder: decoder) { endpoint.makeHandler(principal: $0) },
            Responder(),
        ])
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
        try body(Harness(channel: channel, loop: loop))
        _ = try? channel.finish()
    }

    static func clientFrame(_ text: String, opcode: UInt8 = 0x1) -> [UInt8] {
        WebSocketFrameParserTests.frame(opcode, Array(text.utf8))
    }

    /// An ERROR comes back for a FLOW on a connection without subscriptions.
    static let flow = clientFrame(#"{"type":"FLOW","credits":1,"rid":"f"}"#)

    @Test func upgradeOnTheSecondRequestWithAFrameRightBehindIt() async throws {
        try await withPipeline { h in
            try h.send(Array("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let first = String(decoding: try h.output(), as: UTF8.self)
            #expect(first.hasPrefix("HTTP/1.1 200"))
            try h.send(Self.upgrade + Self.flow)
            let bytes = try h.output()
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 101"))
            #expect(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's sample accept value")
            let headerEnd = bytes.firstRange(of: Array("\r\n\r\n".utf8))!.upperBound
            let frames = Harness.frames(Array(bytes[headerEnd...]))
            #expect(frames.count == 1)
            #expect(frames.first?.0 == 0x1)
            let reply = String(decoding: frames.first?.1 ?? [], as: UTF8.self)
            #expect(reply.contains(#""rid":"f""#))
        }
    }

    @Test func otherPathsAreRefusedAndClosed() async throws {
        try await withPipeline { h in
            try h.send(Array(String(decoding: Self.upgrade, as: UTF8.self).replacingOccurrences(of: "/ws", with: "/nope").utf8))
            #expect(String(decoding: try h.output(), as: UTF8.self).hasPrefix("HTTP/1.1 400"))
            #expect(!h.channel.isActive)
        }
    }

    @Test func upgradeToAnotherProtocolIsAPlainRequestThenTheConnectionCloses() async throws {
        try await withPipeline { h in
            try h.send(
                Array(
                    "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                        .utf8))
            #expect(String(decoding: try h.output(), as: UTF8.self).hasPrefix("HTTP/1.1 200"))
            #expect(!h.channel.isActive)
        }
    }

    @Test func badHandshakeIsRefused() async throws {
        try await withPipeline { h in
            try h.send(Array(String(decoding: Self.upgrade, as: UTF8.self).replacingOccurrences(of: "Version: 13", with: "Version: 8").utf8))
            #expect(String(decoding: try h.output(), as: UTF8.self).hasPrefix("HTTP/1.1 400"))
        }
    }

    /// Upgrades, and returns nothing that was written so far.
    func upgraded(_ h: Harness) throws {
        try h.send(Self.upgrade)
        _ = try h.output()
    }

    @Test func repliesToOneReadLeaveInOneWrite() async throws {
        try await withPipeline { h in
            try upgraded(h)
            try h.send(Array(repeating: Self.flow, count: 3).flatMap { $0 })
            var writes = 0
            var frames: [(UInt8, [UInt8])] = []
            while let buffer = try h.channel.readOutbound(as: ByteBuffer.self) {
                writes += 1
                frames += Harness.frames(Array(buffer.readableBytesView))
            }
            #expect(writes == 1)
            #expect(frames.count == 3)
        }
    }

    /// The connections of an event loop announce their output to that loop's one writer task.
    @Test func oneLoopOutboundPerEventLoop() {
        let first = EmbeddedEventLoop()
        let second = EmbeddedEventLoop()
        #expect(LoopOutbound.of(first) === LoopOutbound.of(first))
        #expect(LoopOutbound.of(first) !== LoopOutbound.of(second))
        #expect(LoopOutbound.of(second).eventLoop === second)
    }

    @Test func unwritableChannelKeepsFramesPendingThenDrains() async throws {
        try await withPipeline { h in
            try upgraded(h)
            h.channel.isWritable = false
            try h.send(Self.flow + Self.flow)
            #expect(try h.output().isEmpty)
            h.channel.isWritable = true
            h.channel.pipeline.fireChannelWritabilityChanged()
            h.loop.run()
            #expect(Harness.frames(try h.output()).count == 2)
        }
    }

    @Test func closeBehindUnreadFramesGivesUpAfterTheWatchdog() async throws {
        try await withPipeline { h in
            try upgraded(h)
            h.channel.isWritable = false
            // Four bad frames with a limit of three: ERRORs queued, then the 1008 close request.
            try h.send(Array(repeating: Self.clientFrame("nope"), count: 4).flatMap { $0 })
            #expect(h.channel.isActive)
            h.loop.advanceTime(by: .seconds(6))
            #expect(!h.channel.isActive)
        }
    }

    @Test func badFrameFloodClosesWith1008AfterTheErrors() async throws {
        try await withPipeline { h in
            try upgraded(h)
            try h.send(Array(repeating: Self.clientFrame("nope"), count: 4).flatMap { $0 })
            let frames = Harness.frames(try h.output())
            #expect(frames.filter { $0.0 == 0x1 }.count == 4)
            #expect(frames.last?.0 == 0x8)
            #expect(frames.last.map { Array($0.1.prefix(2)) } == [0x03, 0xF0])
            // The client answers the close: the socket closes.
            try h.send(WebSocketFrameParserTests.frame(0x8, [0x03, 0xF0]))
            #expect(!h.channel.isActive)
        }
    }

    @Test func protocolErrorAndOversizeCloseWithTheirCodes() async throws {
        try await withPipeline { h in
            try upgraded(h)
            try h.send(WebSocketFrameParserTests.frame(0x1, [UInt8](repeating: 0x20, count: 5000)))
            let frames = Harness.frames(try h.output())
            #expect(frames.map(\.0) == [0x8])
            #expect(frames.first.map { Array($0.1.prefix(2)) } == [0x03, 0xF1])
            // No answer from the client: the handshake timer closes the socket.
            h.loop.advanceTime(by: .seconds(3))
            #expect(!h.channel.isActive)
        }
        try await withPipeline { h in
            try upgraded(h)
            try h.send(WebSocketFrameParserTests.frame(0x1, [0x20], masked: false))
            #expect(Harness.frames(try h.output()).first.map { Array($0.1.prefix(2)) } == [0x03, 0xEA])
        }
    }

    @Test func pingsAndClosesADeadPeer() async throws {
        try await withPipeline { h in
            try upgraded(h)
            h.loop.advanceTime(by: .seconds(30))
            #expect(Harness.frames(try h.output()).map(\.0) == [0x9])
            try h.send(WebSocketFrameParserTests.frame(0xA, []))
            h.loop.advanceTime(by: .seconds(30))
            #expect(Harness.frames(try h.output()).map(\.0) == [0x9], "answered: pinged again")
            h.loop.advanceTime(by: .seconds(30))
            #expect(!h.channel.isActive, "no answer to the second ping")
        }
    }

    @Test func pingIsAnsweredWithItsPayload() async throws {
        try await withPipeline { h in
            try upgraded(h)
            try h.send(WebSocketFrameParserTests.frame(0x9, [7, 8, 9]))
            let frames = Harness.frames(try h.output())
            #expect(frames.count == 1 && frames[0].0 == 0xA && frames[0].1 == [7, 8, 9])
        }
    }

    @Test func gracefulShutdownClosesWith1001() async throws {
        try await withPipeline { h in
            try upgraded(h)
            h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            h.loop.run()
            let frames = Harness.frames(try h.output())
            #expect(frames.map(\.0) == [0x8])
            #expect(frames.first.map { String(decoding: $0.1.dropFirst(2), as: UTF8.self) } == "server shutting down")
            #expect(frames.first.map { Array($0.1.prefix(2)) } == [0x03, 0xE9])
        }
    }

    @Test func clientCloseIsAnsweredAndTheSocketCloses() async throws {
        try await withPipeline { h in
            try upgraded(h)
            try h.send(WebSocketFrameParserTests.frame(0x8, [0x03, 0xE8]))
            #expect(Harness.frames(try h.output()).map(\.0) == [0x8])
            #expect(!h.channel.isActive)
        }
    }
}
