import Models
import NIOCore
import StreamBroker

/// Encodes server frames (never masked) into one buffer: a batch of text frames becomes one
/// write, each payload behind its header in the same bytes.
enum WebSocketFrameEncoder {
    /// Header bytes for a server frame with a payload of `length` bytes.
    static func headerSize(_ length: Int) -> Int {
        length < 126 ? 2 : length <= 0xFFFF ? 4 : 10
    }

    static func writeFrame(opcode: UInt8, payload: some Collection<UInt8>, into buffer: inout ByteBuffer) {
        writeHeader(opcode: opcode, length: payload.count, into: &buffer)
        buffer.writeBytes(payload)
    }

    static func writeHeader(opcode: UInt8, length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(0x80 | opcode)
        if length < 126 {
            buffer.writeInteger(UInt8(length))
        } else if length <= 0xFFFF {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
    }

    /// A batch of text frames in one buffer; a MESSAGE is encoded straight into it.
    static func textFrames(_ frames: [OutboundFrame], allocator: ByteBufferAllocator) -> ByteBuffer {
        var size = 0
        for frame in frames { size += headerSize(frame.count) + frame.count }
        var buffer = allocator.buffer(capacity: size)
        for frame in frames {
            switch frame {
            case .bytes(let bytes):
                writeFrame(opcode: 0x1, payload: bytes, into: &buffer)
            case .message(let message):
                writeHeader(opcode: 0x1, length: message.count, into: &buffer)
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: message.count) { out in
                    message.encode(into: out)
                    return message.count
                }
            }
        }
        return buffer
    }

    /// A close frame with `code` and `reason` (cut to fit the 125 bytes of a control frame).
    static func closeFrame(code: UInt16, reason: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var cut = Substring(reason)
        while cut.utf8.count > 123 { cut = cut.dropLast() }  // whole characters only
        let payload: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(cut.utf8)
        var buffer = allocator.buffer(capacity: 2 + payload.count)
        writeFrame(opcode: 0x8, payload: payload, into: &buffer)
        return buffer
    }

    static func controlFrame(opcode: UInt8, payload: [UInt8], allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 2 + payload.count)
        writeFrame(opcode: opcode, payload: payload, into: &buffer)
        return buffer
    }
}
