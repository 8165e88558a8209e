import Models
import NIOCore
import Testing

@testable import WSGate

/// The client-frame parser and the server-frame encoder: RFC 6455 framing, without a socket.
@Suite("WebSocket framing")
struct WebSocketFrameParserTests {
    static let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]

    /// A client frame: masked with `key`, `fin`, `opcode`, the length in its shortest form
    /// (or `lengthForm` 126/127 to force a longer one).
    static func frame(
        _ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true, rsv: UInt8 = 0, lengthForm: Int? = nil
    ) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | rsv | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        let form = lengthForm ?? (payload.count < 126 ? 0 : payload.count <= 0xFFFF ? 126 : 127)
        switch form {
        case 126:
            bytes += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        case 127:
            bytes.append(maskBit | 127)
            bytes += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> (8 * UInt64($0))) & 0xFF) }
        default:
            bytes.append(maskBit | UInt8(payload.count))
        }
        guard masked else { return bytes + payload }
        return bytes + key + payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
    }

    /// Everything `bytes` parse into, fed in pieces of `chunk` bytes (0: all at once).
    static func parse(_ bytes: [UInt8], max limit: Int = 1 << 20, chunk: Int = 0) throws(WebSocketViolation) -> [WebSocketInbound] {
        var parser = WebSocketFrameParser(maxMessageBytes: limit)
        var buffer = ByteBuffer()
        var out: [WebSocketInbound] = []
        let step = chunk == 0 ? max(bytes.count, 1) : chunk
        var index = 0
        repeat {
            buffer.writeBytes(bytes[index..<min(index + step, bytes.count)])
            index += step
            while let inbound = try parser.next(&buffer) { out.append(inbound) }
        } while index < bytes.count
        #expect(buffer.readableBytes == 0)
        return out
    }

    static func violation(_ bytes: [UInt8], max: Int = 1 << 20) -> WebSocketViolation? {
        do {
            _ = try parse(bytes, max: max)
            return nil
        } catch {
            return error
        }
    }

    @Test func rfcSampleTextFrame() throws {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let bytes: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        #expect(try Self.parse(bytes) == [.text(Array("Hello".utf8))])
    }

    @Test(arguments: [1, 2, 3, 5, 7, 64])
    func framesSplitAcrossReadsParseTheSame(chunk: Int) throws {
        let long = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let bytes =
            Self.frame(0x1, Array(#"{"type":"FLOW","credits":5}"#.utf8)) + Self.frame(0x2, Array(long[0..<300]))
            + Self.frame(0x1, Array(long[0..<13]), fin: false) + Self.frame(0x9, [1, 2, 3]) + Self.frame(0x0, Array(long[13..<1000]))
            + Self.frame(0xA, []) + Self.frame(0x1, long) + Self.frame(0x8, [0x03, 0xE8, 0x62, 0x79])
        let expected: [WebSocketInbound] = [
            .text(Array(#"{"type":"FLOW","credits":5}"#.utf8)), .binary(Array(long[0..<300])), .ping([1, 2, 3]),
            .text(Array(long[0..<1000])), .pong, .text(long), .close(code: 1000),
        ]
        #expect(try Self.parse(bytes, chunk: chunk == 64 ? 4096 : chunk) == expected)
    }

    @Test func lengthsInTheirLongerFormsAreAccepted() throws {
        #expect(try Self.parse(Self.frame(0x1, [65, 66], lengthForm: 126)) == [.text([65, 66])])
        #expect(try Self.parse(Self.frame(0x1, [65, 66], lengthForm: 127)) == [.text([65, 66])])
    }

    @Test func unmaskingCoversEveryLengthAndAlignment() throws {
        for length in 0..<40 {
            let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
            var buffer = ByteBuffer(bytes: [0xAA] + Self.frame(0x2, payload))
            buffer.moveReaderIndex(forwardBy: 1)  // a reader index that is not aligned
            var parser = WebSocketFrameParser(maxMessageBytes: 1000)
            #expect(try parser.next(&buffer) == .binary(payload))
        }
    }

    @Test func closeFrames() throws {
        #expect(try Self.parse(Self.frame(0x8, [])) == [.close(code: nil)])
        #expect(try Self.parse(Self.frame(0x8, [0x0F, 0xA1])) == [.close(code: 4001)])
        #expect(Self.violation(Self.frame(0x8, [0x03]))?.code == 1002)
    }

    @Test func protocolErrorsClose1002() {
        let cases: [(String, [UInt8])] = [
            ("unmasked", Self.frame(0x1, [65], masked: false)),
            ("reserved bit", Self.frame(0x1, [65], rsv: 0x40)),
            ("unknown opcode", Self.frame(0x3, [65])),
            ("fragmented control", Self.frame(0x9, [1], fin: false)),
            ("long control", Self.frame(0x9, [UInt8](repeating: 1, count: 126))),
            ("continuation first", Self.frame(0x0, [65])),
            ("message inside a message", Self.frame(0x1, [65], fin: false) + Self.frame(0x1, [66])),
        ]
        for (name, bytes) in cases {
            #expect(Self.violation(bytes)?.code == 1002, "\(name)")
        }
    }

    @Test func oversizeMessagesClose1009BeforeTheirPayloadArrives() throws {
        // Only the header of a frame over the limit: refused at once.
        let header = Array(Self.frame(0x1, [UInt8](repeating: 65, count: 5000)).prefix(8))
        #expect(Self.violation(header, max: 4096)?.code == 1009)
        // A 64-bit length past anything allowed.
        #expect(Self.violation([0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], max: 4096)?.code == 1009)
        // Fragments that add up to more than the limit.
        let fragments = Self.frame(0x1, [UInt8](repeating: 65, count: 3000), fin: false) + Self.frame(0x0, [UInt8](repeating: 66, count: 3000))
        #expect(Self.violation(fragments, max: 4096)?.code == 1009)
        // Exactly the limit is fine.
        #expect(try Self.parse(Self.frame(0x1, [UInt8](repeating: 65, count: 4096)), max: 4096).count == 1)
    }

    @Test(arguments: [0, 1, 125, 126, 65535, 65536])
    func serverFramesHaveTheShortestHeader(length: Int) {
        let payload = [UInt8](repeating: 0x61, count: length)
        let buffer = WebSocketFrameEncoder.textFrames([.bytes(payload), .bytes([0x62])], allocator: ByteBufferAllocator())
        let headerSize = WebSocketFrameEncoder.headerSize(length)
        #expect(headerSize == (length < 126 ? 2 : length < 65536 ? 4 : 10))
        #expect(buffer.readableBytes == headerSize + length + 3)
        let bytes = Array(buffer.readableBytesView)
        #expect(bytes[0] == 0x81)
        #expect(bytes[1] & 0x80 == 0, "server frames are not masked")
        #expect(Array(bytes[headerSize..<headerSize + length]) == payload)
        #expect(Array(bytes.suffix(3)) == [0x81, 0x01, 0x62])
    }

    /// A MESSAGE encoded straight into the batch's buffer: the same bytes as encoded alone, behind
    /// the shortest header for its length.
    @Test(arguments: [125, 126, 65_535, 65_536])
    func messageFramesAreEncodedIntoTheBatch(frameLength: Int) {
        let template = MessageFrame.Template(topic: "t", group: "g")
        func message(padding: Int) -> MessageFrame {
            let envelope = Array(#"{"p":""#.utf8) + [UInt8](repeating: 0x61, count: padding) + Array(#""}"#.utf8)
            return MessageFrame(template, partition: 0, offset: 1, attempt: 1, envelope: envelope)
        }
        let message = message(padding: frameLength - message(padding: 0).count)
        #expect(message.count == frameLength)
        let buffer = WebSocketFrameEncoder.textFrames([.bytes([0x62]), .message(message)], allocator: ByteBufferAllocator())
        let headerSize = WebSocketFrameEncoder.headerSize(message.count)
        #expect(buffer.readableBytes == 3 + headerSize + message.count)
        let bytes = Array(buffer.readableBytesView)
        #expect(Array(bytes.prefix(3)) == [0x81, 0x01, 0x62])
        let header: [UInt8] =
            switch frameLength {
            case 125: [0x81, 125]
            case 126: [0x81, 126, 0x00, 0x7E]
            case 65_535: [0x81, 126, 0xFF, 0xFF]
            default: [0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]
            }
        #expect(Array(bytes[3..<3 + headerSize]) == header)
        #expect(Array(bytes[(3 + headerSize)...]) == message.bytes)
    }

    @Test func closeFrameCarriesCodeAndAReasonThatFits() {
        let short = WebSocketFrameEncoder.closeFrame(code: 1008, reason: "slow consumer", allocator: ByteBufferAllocator())
        #expect(Array(short.readableBytesView) == [0x88, 15, 0x03, 0xF0] + Array("slow consumer".utf8))
        let long = WebSocketFrameEncoder.closeFrame(code: 1001, reason: String(repeating: "é", count: 100), allocator: ByteBufferAllocator())
        let bytes = Array(long.readableBytesView)
        #expect(Int(bytes[1]) <= 125 && bytes.count == 2 + Int(bytes[1]))
        #expect(String(validating: bytes[4...], as: UTF8.self) != nil, "the reason is cut between characters")
    }
}
