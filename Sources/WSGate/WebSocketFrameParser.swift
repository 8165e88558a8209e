import NIOCore

/// What a client sent, message by message (fragments already joined, payloads unmasked).
enum WebSocketInbound: Equatable, Sendable {
    case text([UInt8])
    case binary([UInt8])
    case ping([UInt8])
    case pong
    /// A close frame; `code` is nil when the frame carried none.
    case close(code: UInt16?)
}

/// A client broke the WebSocket protocol (RFC 6455): the connection is closed with `code`.
struct WebSocketViolation: Error, Equatable, Sendable {
    /// 1002 (protocol error) or 1009 (message too big).
    let code: UInt16
    let reason: String

    static func protocolError(_ reason: String) -> Self { .init(code: 1002, reason: reason) }
    static func tooBig(_ limit: Int) -> Self { .init(code: 1009, reason: "message over \(limit) bytes") }
}

/// Parses a client's WebSocket frames from the bytes read off the socket: a pure state machine
/// (no I/O), so that every protocol rule is unit-tested.
///
/// A frame is taken only when it is whole; its payload is unmasked straight into the array that
/// the JSON parser reads (the one copy on the way in). Size limits are checked on the header,
/// before the payload is waited for.
struct WebSocketFrameParser {
    /// The largest message (all fragments together), `BUS_MAX_FRAME_BYTES`.
    let maxMessageBytes: Int
    /// The fragments of a message in progress, and its opcode (1 text, 2 binary).
    private var fragments: [UInt8]?
    private var fragmentedOpcode: UInt8 = 0

    init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    /// The next message or control frame at the front of `buffer`, consuming its bytes; nil
    /// when `buffer` holds no whole frame yet (then nothing is consumed, except the frames of a
    /// fragmented message that is not complete).
    mutating func next(_ buffer: inout ByteBuffer) throws(WebSocketViolation) -> WebSocketInbound? {
        while let header = try parseHeader(buffer) {
            guard buffer.readableBytes >= header.size + header.length else { return nil }
            let payload = unmask(buffer, offset: header.size, length: header.length, key: header.maskKey)
            buffer.moveReaderIndex(forwardBy: header.size + header.length)
            switch header.opcode {
            case 0x8:
                guard payload.count != 1 else { throw .protocolError("close frame with a 1-byte payload") }
                return .close(code: payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : nil)
            case 0x9:
                return .ping(payload)
            case 0xA:
                return .pong
            case 0x0:
                guard var message = fragments else { throw .protocolError("continuation frame without a message") }
                fragments = nil  // keeps `message` uniquely referenced while it grows
                message.append(contentsOf: payload)
                guard header.fin else {
                    fragments = message
                    continue
                }
                return fragmentedOpcode == 0x1 ? .text(message) : .binary(message)
            default:  // 0x1, 0x2 (parseHeader lets no other opcode through)
                guard fragments == nil else { throw .protocolError("new message before the last one ended") }
                guard header.fin else {
                    fragments = payload
                    fragmentedOpcode = header.opcode
                    continue
                }
                return header.opcode == 0x1 ? .text(payload) : .binary(payload)
            }
        }
        return nil
    }

    private struct Header {
        var fin: Bool
        var opcode: UInt8
        var length: Int
        var maskKey: UInt32
        /// Header bytes, mask key included.
        var size: Int
    }

    /// The header at the front of `buffer` (not consumed), checked; nil when incomplete.
    private func parseHeader(_ buffer: ByteBuffer) throws(WebSocketViolation) -> Header? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self), let second = buffer.getInteger(at: start + 1, as: UInt8.self)
        else { return nil }
        let fin = first & 0x80 != 0
        let opcode = first & 0x0F
        guard first & 0x70 == 0 else { throw .protocolError("reserved bits set without an extension") }
        let isControl = opcode & 0x08 != 0
        switch opcode {
        case 0x0, 0x1, 0x2, 0x8, 0x9, 0xA: break
        default: throw .protocolError("unknown opcode \(opcode)")
        }
        guard second & 0x80 != 0 else { throw .protocolError("client frames must be masked") }
        var size = 2
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let word = buffer.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = Int(word)
            size = 4
        } else if length == 127 {
            guard let quad = buffer.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            guard quad <= UInt64(maxMessageBytes) else { throw .tooBig(maxMessageBytes) }
            length = Int(quad)
            size = 10
        }
        if isControl {
            guard fin else { throw .protocolError("fragmented control frame") }
            guard length <= 125 else { throw .protocolError("control frame over 125 bytes") }
        } else if length + (opcode == 0 ? fragments?.count ?? 0 : 0) > maxMessageBytes {
            throw .tooBig(maxMessageBytes)
        }
        guard let maskKey = buffer.getInteger(at: start + size, as: UInt32.self) else { return nil }
        return Header(fin: fin, opcode: opcode, length: length, maskKey: maskKey, size: size + 4)
    }

    /// `length` bytes at `offset` from the reader index, unmasked with `key` (big-endian, as
    /// on the wire), eight bytes at a time.
    private func unmask(_ buffer: ByteBuffer, offset: Int, length: Int, key: UInt32) -> [UInt8] {
        guard length > 0 else { return [] }
        return buffer.withUnsafeReadableBytes { raw in
            let source = UnsafeRawBufferPointer(rebasing: raw[offset..<offset + length])
            return [UInt8](unsafeUninitializedCapacity: length) { out, count in
                let target = UnsafeMutableRawBufferPointer(out)
                // The key's bytes in wire order, twice, as one machine word.
                let key64 = UInt64(bigEndian: UInt64(key) << 32 | UInt64(key))
                var index = 0
                while index + 8 <= length {
                    let word = source.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                    target.storeBytes(of: word ^ key64, toByteOffset: index, as: UInt64.self)
                    index += 8
                }
                while index < length {
                    target[index] = source[index] ^ UInt8(truncatingIfNeeded: key >> (24 - 8 * UInt32(index & 3)))
                    index += 1
                }
                count = length
            }
        }
    }
}
