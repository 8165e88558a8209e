import Models

/// A frame queued for a connection: encoded bytes, or a MESSAGE that is encoded where it is
/// written (the socket's buffer), so that its envelope is copied once.
public enum OutboundFrame: Sendable {
    case bytes([UInt8])
    case message(MessageFrame)

    /// The encoded frame's length in bytes.
    public var count: Int {
        switch self {
        case .bytes(let bytes): bytes.count
        case .message(let message): message.count
        }
    }

    /// The encoded frame.
    public var bytes: [UInt8] {
        switch self {
        case .bytes(let bytes): bytes
        case .message(let message): message.bytes
        }
    }
}
