/// A MESSAGE frame (SPEC §5) that is encoded where it goes: straight into the socket's
/// buffer, behind its WebSocket header, with the event's shared envelope bytes copied once.
///
/// A subscription's frames share a ``Template`` (the topic and group parts, encoded once); a
/// frame itself holds only its numbers and a reference to the envelope.
public struct MessageFrame: Sendable {
    /// The parts of a subscription's MESSAGE frames that do not change from frame to frame.
    public final class Template: Sendable {
        /// `{"type":"MESSAGE","topic":…,"partition":`
        let head: [UInt8]
        /// `,"group":…,"offset":`
        let middle: [UInt8]

        /// - Parameter group: nil for an ephemeral subscription (`"group":null`).
        public init(topic: String, group: String?) {
            var head = JSONObjectWriter(capacity: 48 + topic.utf8.count)
            head.string("type", "MESSAGE")
            head.string("topic", topic)
            self.head = head.bytes + #","partition":"#.utf8
            var middle = Array(#","group":"#.utf8)
            if let group { JSONWriter.writeString(group, into: &middle) } else { middle += "null".utf8 }
            middle += #","offset":"#.utf8
            self.middle = middle
        }
    }

    private static let attemptKey = Array(#","attempt":"#.utf8)
    private static let envelopeKey = Array(#","envelope":"#.utf8)

    /// The subscription's shared parts.
    public let template: Template
    public let partition: Int
    public let offset: Int64
    /// 1 for a first delivery.
    public let attempt: Int
    /// The event's envelope (``Event/envelopeJSON``), shared by every frame of the event.
    public let envelope: [UInt8]
    /// The encoded frame's length in bytes.
    public let count: Int

    /// A frame of `template`'s subscription; its length is worked out here, once.
    public init(_ template: Template, partition: Int, offset: Int64, attempt: Int, envelope: [UInt8]) {
        self.template = template
        self.partition = partition
        self.offset = offset
        self.attempt = attempt
        self.envelope = envelope
        count =
            template.head.count + DecimalDigits.count(Int64(partition)) + template.middle.count + DecimalDigits.count(offset)
            + Self.attemptKey.count + DecimalDigits.count(Int64(attempt)) + Self.envelopeKey.count + envelope.count + 1
    }

    /// Writes the frame's ``count`` bytes at the start of `out` (which has room for them).
    public func encode(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= count, "no room for a MESSAGE frame")
        var at = out.baseAddress!
        func copy(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            at += bytes.count
        }
        copy(template.head)
        at += DecimalDigits.write(Int64(partition), at: at)
        copy(template.middle)
        at += DecimalDigits.write(offset, at: at)
        copy(Self.attemptKey)
        at += DecimalDigits.write(Int64(attempt), at: at)
        copy(Self.envelopeKey)
        copy(envelope)
        at.storeBytes(of: UInt8(ascii: "}"), as: UInt8.self)
    }

    /// The encoded frame as an array.
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            encode(into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }
}
