import Models

/// A frame queued for a connection: encoded bytes, or a MESSAGE that is encoded where it is
/// written (the socket's buffer), so that its envelope is copied once.
///
/// One word, as a plain array was: the message is boxed (`indirect`), so that a queue of
/// thousands of frames (a slow ephemeral subscriber's, up to `BUS_EPHEMERAL_QUEUE`) is no
/// larger than before.
public enum OutboundFrame: Sendable {
    case bytes([UInt8])
    indirect case message(MessageFrame)

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
