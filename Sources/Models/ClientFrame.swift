/// Where a subscription starts (SPEC §5 `from`).
public enum StartPosition: Sendable, Equatable {
    case earliest
    case latest
    /// The first offset to deliver; one below the first offset still stored (0 included, as in
    /// the sketch's recipe, or offsets removed by retention) starts at the earliest.
    case offset(Int64)
    /// The first event with `ts >= value` (epoch ms).
    case timestamp(Int64)

    public static func decode(_ value: JSONValue, rid: String? = nil) throws(RequestError) -> StartPosition {
        guard case .object = value else { throw .badRequest("from must be an object like {\"kind\":\"earliest\"}", rid: rid) }
        let reader = FieldReader(value, frame: "from", rid: rid)
        guard let kind = try reader.optionalString("kind") else { throw .badRequest("from needs a kind", rid: rid) }
        switch kind {
        case "earliest": return .earliest
        case "latest": return .latest
        case "offset":
            guard let offset = try reader.optionalInt("value", min: 0) else {
                throw .badRequest("from kind offset needs an integer value ≥ 0", rid: rid)
            }
            return .offset(offset)
        case "timestamp":
            guard let ts = try reader.optionalInt("value", min: 0) else {
                throw .badRequest("from kind timestamp needs a value in epoch milliseconds", rid: rid)
            }
            return .timestamp(ts)
        default:
            throw .badRequest("from kind must be earliest, latest, offset or timestamp, not '\(kind.prefix(40))'", rid: rid)
        }
    }

    public var jsonValue: JSONValue {
        switch self {
        case .earliest: .object([("kind", .string("earliest"))])
        case .latest: .object([("kind", .string("latest"))])
        case .offset(let v): .object([("kind", .string("offset")), ("value", .number(Double(v), integer: v))])
        case .timestamp(let v): .object([("kind", .string("timestamp")), ("value", .number(Double(v), integer: v))])
        }
    }
}

/// Key and/or one header equality; events that do not match are skipped for the group.
public struct SubscriptionFilter: Sendable, Equatable, Hashable {
    public var key: String?
    public var header: Header?

    /// One header equality: `[name, value]`.
    public struct Header: Sendable, Equatable, Hashable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public init(key: String? = nil, header: Header? = nil) {
        self.key = key
        self.header = header
    }

    public var isEmpty: Bool { key == nil && header == nil }

    public func matches(key eventKey: String?, headers: Headers?) -> Bool {
        if let key, key != eventKey { return false }
        if let header, headers?[header.name] != header.value { return false }
        return true
    }

    static func decode(_ value: JSONValue, rid: String?) throws(RequestError) -> SubscriptionFilter {
        guard case .object = value else { throw .badRequest("filter must be an object", rid: rid) }
        let reader = FieldReader(value, frame: "filter", rid: rid)
        var filter = SubscriptionFilter(key: try reader.optionalString("key", maxBytes: Limits.maxKeyBytes))
        if let header = reader.value("header") {
            guard case .array(let items) = header, items.count == 2,
                case .string(let name) = items[0], case .string(let headerValue) = items[1]
            else { throw .badRequest("filter header must be [name, value] with two strings", rid: rid) }
            filter.header = Header(name: name, value: headerValue)
        }
        try reader.rejectUnknown(allowed: ["key", "header"])
        return filter
    }
}

/// A `SUBSCRIBE` frame: a group (or ephemeral) subscription, where it starts and its limits.
public struct SubscribeRequest: Sendable, Equatable {
    public var topic: String
    /// `nil`: an ephemeral subscription.
    public var group: String?
    public var from: StartPosition?
    public var maxInflight: Int?
    public var ackTimeoutMs: Int64?
    public var filter: SubscriptionFilter
    public var reset: Bool
    public var rid: String?

    public init(
        topic: String, group: String?, from: StartPosition? = nil, maxInflight: Int? = nil,
        ackTimeoutMs: Int64? = nil, filter: SubscriptionFilter = .init(), reset: Bool = false, rid: String? = nil
    ) {
        self.topic = topic
        self.group = group
        self.from = from
        self.maxInflight = maxInflight
        self.ackTimeoutMs = ackTimeoutMs
        self.filter = filter
        self.reset = reset
        self.rid = rid
    }
}

/// ACK and NACK share their addressing.
public struct AckRequest: Sendable, Equatable {
    public var topic: String
    public var partition: Int
    public var group: String?
    public var offset: Int64
    public var rid: String?

    public init(topic: String, partition: Int, group: String?, offset: Int64, rid: String? = nil) {
        self.topic = topic
        self.partition = partition
        self.group = group
        self.offset = offset
        self.rid = rid
    }
}

/// A client-to-server frame (SPEC §5).
public enum ClientFrame: Sendable, Equatable {
    case publish(PublishRequest)
    case subscribe(SubscribeRequest)
    case unsubscribe(topic: String, group: String?, rid: String?)
    case ack(AckRequest)
    case nack(AckRequest, reason: String?, delayMs: Int64?)
    /// `topic` nil (the sketch's `{"type":"FLOW","credits":50}`): the credits go to every
    /// subscription of the connection.
    case flow(topic: String?, group: String?, credits: Int64, rid: String?)
    /// A credential (SPEC §12), first or to refresh one that will expire.
    case auth(token: String, rid: String?)

    /// Decodes one text frame. Every failure is a ``RequestError`` that says what is wrong and
    /// carries the frame's `rid` when one could be read.
    public static func decode(_ bytes: [UInt8]) throws(RequestError) -> ClientFrame {
        if let frame = decodeCommon(bytes) { return frame }
        return try decodeGeneral(bytes)
    }

    /// Decodes any frame, or says what is wrong with it.
    static func decodeGeneral(_ bytes: [UInt8]) throws(RequestError) -> ClientFrame {
        var members: [(String, JSONValue)] = []
        members.reserveCapacity(8)
        var payload: RawJSON?
        var parser = JSONParser(bytes)
        do {
            try parser.parseObjectMembers { (key: String, inner: inout JSONParser) throws(JSONError) in
                if key == "payload" {
                    payload = try inner.captureValue()
                } else {
                    members.append((key, try inner.parseValue()))
                }
            }
        } catch {
            var whole = JSONParser(bytes)
            if let value = try? whole.parseDocument() {
                throw .badRequest("a frame must be a JSON object, not \(value.kindName)")
            }
            throw .badRequest("frame is not valid JSON: \(error)")
        }
        var rid: String?
        if case .string(let text)? = members.first(where: { $0.0 == "rid" })?.1 {
            rid = text.utf8.count <= Limits.maxRidBytes ? text : String(text.prefix(Limits.maxRidBytes))
        }
        let reader = FieldReader(members: members, frame: "frame", rid: rid)
        guard let type = try reader.optionalString("type") else {
            throw .badRequest("frame needs a type", rid: rid)
        }
        switch type {
        case "PUBLISH":
            return .publish(try PublishRequest.decode(members: members, payload: payload, topic: nil, frame: "PUBLISH", rid: rid))
        case "SUBSCRIBE":
            let r = FieldReader(members: members, frame: "SUBSCRIBE", rid: rid)
            let topic = try r.requiredName("topic")
            var from: StartPosition?
            if let value = r.value("from") { from = try StartPosition.decode(value, rid: rid) }
            var filter = SubscriptionFilter()
            if let value = r.value("filter") { filter = try SubscriptionFilter.decode(value, rid: rid) }
            return .subscribe(
                SubscribeRequest(
                    topic: topic,
                    group: try r.optionalName("group"),
                    from: from,
                    maxInflight: try r.optionalInt("max_inflight", min: 1, max: Int64(Limits.maxInflight)).map { Int($0) },
                    ackTimeoutMs: try r.optionalInt("ack_timeout_ms", min: 1, max: 86_400_000),
                    filter: filter,
                    reset: try r.optionalBool("reset") ?? false,
                    rid: rid
                ))
        case "UNSUBSCRIBE":
            let r = FieldReader(members: members, frame: "UNSUBSCRIBE", rid: rid)
            return .unsubscribe(topic: try r.requiredName("topic"), group: try r.optionalName("group"), rid: rid)
        case "ACK", "NACK":
            let r = FieldReader(members: members, frame: type, rid: rid)
            let ack = AckRequest(
                topic: try r.requiredName("topic"),
                partition: Int(try r.requiredInt("partition", min: 0, max: Int64(Limits.maxPartitions - 1))),
                group: try r.optionalName("group"),
                offset: try r.requiredInt("offset", min: 1),
                rid: rid
            )
            if type == "ACK" { return .ack(ack) }
            return .nack(
                ack,
                reason: try r.optionalString("reason", maxBytes: Limits.maxHeaderValueBytes),
                delayMs: try r.optionalInt("delay_ms", min: 0, max: 86_400_000)
            )
        case "FLOW":
            let r = FieldReader(members: members, frame: "FLOW", rid: rid)
            let topic = try r.optionalName("topic")
            let group = try r.optionalName("group")
            if topic == nil && group != nil { throw .badRequest("FLOW with a group needs its topic", rid: rid) }
            return .flow(
                topic: topic,
                group: group,
                credits: try r.requiredInt("credits", min: 0, max: 1_000_000_000),
                rid: rid
            )
        case "AUTH":
            let r = FieldReader(members: members, frame: "AUTH", rid: rid)
            guard let token = try r.optionalString("token", maxBytes: Limits.maxTokenBytes), !token.isEmpty else {
                throw .badRequest("AUTH needs a token", rid: rid)
            }
            return .auth(token: token, rid: rid)
        default:
            throw .badRequest("unknown frame type '\(type.prefix(40))'", rid: rid)
        }
    }

    public var rid: String? {
        switch self {
        case .publish(let p): p.rid
        case .subscribe(let s): s.rid
        case .unsubscribe(_, _, let rid): rid
        case .ack(let a): a.rid
        case .nack(let a, _, _): a.rid
        case .flow(_, _, _, let rid): rid
        case .auth(_, let rid): rid
        }
    }
}
