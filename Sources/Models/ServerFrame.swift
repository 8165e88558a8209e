/// Encoders for server-to-client frames (SPEC §5). Each returns the frame's JSON bytes.
public enum ServerFrame {
    public static func published(topic: String, partition: Int, offset: Int64, id: String, rid: String?, duplicate: Bool) -> [UInt8] {
        // Room for the names, numbers and strings: the array grows only for strings with escapes.
        var w = JSONObjectWriter(capacity: 128 + topic.utf8.count + id.utf8.count + (rid?.utf8.count ?? 0))
        w.string("type", "PUBLISHED")
        w.string("topic", topic)
        w.int("partition", partition)
        w.int("offset", offset)
        w.string("id", id)
        w.optionalString("rid", rid)
        w.bool("duplicate", duplicate)
        return w.finish()
    }

    public static func subscribed(topic: String, group: String?, rid: String?) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 96)
        w.string("type", "SUBSCRIBED")
        w.string("topic", topic)
        w.optionalString("group", group, nullIfMissing: true)
        w.optionalString("rid", rid)
        return w.finish()
    }

    /// A MESSAGE frame around an already-encoded envelope (``MessageFrame`` as an array).
    public static func message(topic: String, partition: Int, group: String?, offset: Int64, attempt: Int, envelope: [UInt8]) -> [UInt8] {
        MessageFrame(.init(topic: topic, group: group), partition: partition, offset: offset, attempt: attempt, envelope: envelope).bytes
    }

    public static func error(_ error: RequestError) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 128)
        w.string("type", "ERROR")
        w.string("code", error.code.rawValue)
        w.string("message", error.message)
        if let retryAfterMs = error.retryAfterMs { w.int("retry_after_ms", retryAfterMs) }
        w.optionalString("rid", error.rid)
        return w.finish()
    }

    /// The reply to an `AUTH` frame; `expiresMs` nil: the credential does not expire.
    public static func authed(principal: String, expiresMs: Int64?, rid: String?) -> [UInt8] {
        var w = JSONObjectWriter(capacity: 96)
        w.string("type", "AUTHED")
        w.string("principal", principal)
        if let expiresMs { w.int("expires", expiresMs) } else { w.raw("expires", Array("null".utf8)) }
        w.optionalString("rid", rid)
        return w.finish()
    }
}
