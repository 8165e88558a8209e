/// One stored event, as read from or written to the log.
///
/// Immutable, and a class: the batches, caches and deliveries that hold an event share one
/// object (a copy is one reference count, not one per string and buffer). Its envelope JSON is
/// encoded once, when the event is made, and shared by every group and connection it is
/// delivered to.
public final class Event: Sendable, Equatable {
    public let topic: String
    public let partition: Int
    public let offset: Int64
    public let id: String
    /// Epoch milliseconds.
    public let ts: Int64
    public let key: String?
    public let headers: Headers?
    public let payload: RawJSON
    /// The envelope as JSON bytes: `{id, ts, topic, key?, partition, offset, headers?, payload}`.
    public let envelopeJSON: [UInt8]

    public init(
        topic: String, partition: Int, offset: Int64, id: String, ts: Int64,
        key: String?, headers: Headers?, payload: RawJSON
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.id = id
        self.ts = ts
        self.key = key
        self.headers = headers
        self.payload = payload
        let headerBytes = headers?.jsonBytes
        // Room for the names, numbers and strings: the array grows only for strings with escapes.
        var writer = JSONObjectWriter(
            capacity: payload.bytes.count + (headerBytes?.count ?? 0) + 128 + id.utf8.count + topic.utf8.count + (key?.utf8.count ?? 0))
        writer.string("id", id)
        writer.int("ts", ts)
        writer.string("topic", topic)
        writer.optionalString("key", key)
        writer.int("partition", partition)
        writer.int("offset", offset)
        if let headerBytes { writer.raw("headers", headerBytes) }
        writer.raw("payload", payload.bytes)
        envelopeJSON = writer.finish()
    }

    public static func == (lhs: Event, rhs: Event) -> Bool {
        lhs === rhs
            || (lhs.topic == rhs.topic && lhs.partition == rhs.partition && lhs.offset == rhs.offset && lhs.id == rhs.id
                && lhs.ts == rhs.ts && lhs.key == rhs.key && lhs.headers == rhs.headers && lhs.payload == rhs.payload)
    }
}

/// Event headers: string names to string values, in the order given.
public struct Headers: Sendable, Equatable, Hashable {
    public var pairs: [(String, String)]

    public init(_ pairs: [(String, String)]) { self.pairs = pairs }

    public subscript(name: String) -> String? {
        pairs.first { $0.0 == name }?.1
    }

    public static func == (lhs: Headers, rhs: Headers) -> Bool {
        lhs.pairs.count == rhs.pairs.count && zip(lhs.pairs, rhs.pairs).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    public func hash(into hasher: inout Hasher) {
        for (name, value) in pairs {
            hasher.combine(name)
            hasher.combine(value)
        }
    }

    public var jsonBytes: [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        for (i, (name, value)) in pairs.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSONWriter.writeString(name, into: &out)
            out.append(UInt8(ascii: ":"))
            JSONWriter.writeString(value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Reads headers from a JSON object of strings, enforcing ``Limits``.
    public static func decode(_ value: JSONValue) throws(RequestError) -> Headers {
        guard case .object(let members) = value else {
            throw .badRequest("headers must be an object of strings, not \(value.kindName)")
        }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(members.count)
        for (name, item) in members {
            guard case .string(let text) = item else {
                throw .badRequest("header '\(name.prefix(60))' must be a string, not \(item.kindName)")
            }
            pairs.append((name, text))
        }
        let headers = Headers(pairs)
        if let problem = headers.problem { throw .badRequest(problem) }
        return headers
    }

    /// What breaks the header limits of ``Limits`` (count, name and value sizes), or nil.
    public var problem: String? {
        if pairs.count > Limits.maxHeaders { return "at most \(Limits.maxHeaders) headers are allowed" }
        for (name, text) in pairs {
            if name.isEmpty || name.utf8.count > Limits.maxHeaderNameBytes {
                return "header names must be 1–\(Limits.maxHeaderNameBytes) bytes"
            }
            if text.utf8.count > Limits.maxHeaderValueBytes {
                return "header '\(name.prefix(60))' is longer than \(Limits.maxHeaderValueBytes) bytes"
            }
        }
        return nil
    }
}
