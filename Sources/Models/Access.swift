/// A pattern over dot-separated names, NATS subject style (SPEC §12): `orders.created` matches
/// that name, `orders.*` any one segment in that place, `orders.>` one or more trailing
/// segments, and `>` every name.
public struct NamePattern: Sendable, Equatable, CustomStringConvertible {
    enum Segment: Sendable, Equatable {
        case literal(Substring)
        case one
        case rest
    }

    let segments: [Segment]
    public let description: String

    /// Parses a pattern, or says what is wrong with it.
    public init(_ text: String) throws(RequestError) {
        guard !text.isEmpty else { throw .badRequest("a pattern must not be empty") }
        var segments: [Segment] = []
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        for (index, part) in parts.enumerated() {
            switch part {
            case "*": segments.append(.one)
            case ">":
                guard index == parts.count - 1 else { throw .badRequest("pattern '\(text.prefix(60))': '>' may only be the last segment") }
                segments.append(.rest)
            default:
                if part.isEmpty { throw .badRequest("pattern '\(text.prefix(60))' has an empty segment") }
                if part.contains("*") || part.contains(">") {
                    throw .badRequest("pattern '\(text.prefix(60))': '*' and '>' must be whole segments")
                }
                if let problem = Limits.nameProblem(String(part), what: "pattern segment") {
                    throw .badRequest("pattern '\(text.prefix(60))': \(problem)")
                }
                segments.append(.literal(part))
            }
        }
        self.segments = segments
        self.description = text
    }

    public func matches(_ name: String) -> Bool {
        var index = 0
        for part in name.split(separator: ".", omittingEmptySubsequences: false) {
            guard index < segments.count else { return false }
            switch segments[index] {
            case .rest: return true
            case .one: break
            case .literal(let literal): if literal != part { return false }
            }
            index += 1
        }
        return index == segments.count
    }
}

/// What a credential allows (a tokens-file entry or a JWT's `bus` claim, SPEC §12).
public struct Permissions: Sendable, Equatable {
    /// Topics it may publish to; none when the credential names none.
    public var publish: [NamePattern]
    /// Topics it may subscribe to; none when the credential names none.
    public var subscribe: [NamePattern]
    /// Consumer groups it may join; nil: any.
    public var groups: [NamePattern]?
    /// May call the state-changing HTTP routes.
    public var admin: Bool
    /// Publishes per second across its connections on one replica; nil: no limit.
    public var rate: Int?

    public init(publish: [NamePattern] = [], subscribe: [NamePattern] = [], groups: [NamePattern]? = nil, admin: Bool = false, rate: Int? = nil) {
        self.publish = publish
        self.subscribe = subscribe
        self.groups = groups
        self.admin = admin
        self.rate = rate
    }

    /// Permissions from pattern texts (absent publish/subscribe: none; absent groups: any).
    /// - Throws: `bad_request` naming `what` and the bad pattern.
    public init(
        publish: [String]?, subscribe: [String]?, groups: [String]?, admin: Bool, rate: Int?, what: String
    ) throws(RequestError) {
        func patterns(_ texts: [String]?, _ name: String) throws(RequestError) -> [NamePattern]? {
            guard let texts else { return nil }
            var result: [NamePattern] = []
            for text in texts {
                do {
                    result.append(try NamePattern(text))
                } catch {
                    throw .badRequest("\(what) \(name): \(error.message)")
                }
            }
            return result
        }
        if let rate, rate < 1 { throw .badRequest("\(what) rate must be at least 1, got \(rate)") }
        self.init(
            publish: try patterns(publish, "publish") ?? [], subscribe: try patterns(subscribe, "subscribe") ?? [],
            groups: try patterns(groups, "groups"), admin: admin, rate: rate)
    }

    /// Reads `{publish?, subscribe?, groups?, admin?, rate?}`; members named in `extra` are the
    /// caller's to read; any other member is refused. `what` names the object in errors.
    public static func decode(_ value: JSONValue, what: String, extra: Set<String> = []) throws(RequestError) -> Permissions {
        guard case .object = value else { throw .badRequest("\(what) must be a JSON object") }
        let reader = FieldReader(value, frame: what)
        try reader.rejectUnknown(allowed: extra.union(["publish", "subscribe", "groups", "admin", "rate"]))
        return try Permissions(
            publish: try reader.optionalStringArray("publish"), subscribe: try reader.optionalStringArray("subscribe"),
            groups: try reader.optionalStringArray("groups"), admin: try reader.optionalBool("admin") ?? false,
            rate: try reader.optionalInt("rate", min: 1, max: 10_000_000).map { Int($0) }, what: what)
    }

    public func mayPublish(_ topic: String) -> Bool { publish.contains { $0.matches(topic) } }
    public func maySubscribe(_ topic: String) -> Bool { subscribe.contains { $0.matches(topic) } }
    public func mayJoin(_ group: String) -> Bool { groups?.contains { $0.matches(group) } ?? true }
}

/// An authenticated client: who it is, what it may do, and until when.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var permissions: Permissions
    /// When the credential expires (epoch ms); nil: it does not.
    public var expiresMs: Int64?
    /// What identifies the credential for revocation (a token's hash); nil for JWTs.
    public var credential: String?

    public init(name: String, permissions: Permissions, expiresMs: Int64? = nil, credential: String? = nil) {
        self.name = name
        self.permissions = permissions
        self.expiresMs = expiresMs
        self.credential = credential
    }
}

/// One action's principal lists in a topic ACL: `deny` wins; an `allow` list admits only those.
public struct AccessList: Sendable, Equatable {
    public var allow: [String]?
    public var deny: [String]

    public init(allow: [String]? = nil, deny: [String] = []) {
        self.allow = allow
        self.deny = deny
    }

    public func permits(_ principal: String) -> Bool {
        if deny.contains(principal) { return false }
        return allow?.contains(principal) ?? true
    }

    var jsonValue: JSONValue {
        var members: [(String, JSONValue)] = []
        if let allow { members.append(("allow", .array(allow.map { .string($0) }))) }
        members.append(("deny", .array(deny.map { .string($0) })))
        return .object(members)
    }

    static func decode(_ value: JSONValue, what: String) throws(RequestError) -> AccessList {
        guard case .object = value else { throw .badRequest("\(what) must be an object like {\"allow\":[...],\"deny\":[...]}") }
        let reader = FieldReader(value, frame: what)
        func names(_ name: String) throws(RequestError) -> [String]? {
            guard let names = try reader.optionalStringArray(name) else { return nil }
            if let bad = names.first(where: { $0.isEmpty || $0.utf8.count > Limits.maxNameLength }) {
                throw .badRequest("\(what) \(name) holds a principal name that is empty or too long: '\(bad.prefix(60))'")
            }
            return names
        }
        let list = AccessList(allow: try names("allow"), deny: try names("deny") ?? [])
        try reader.rejectUnknown(allowed: ["allow", "deny"])
        return list
    }
}

/// A topic config's `acl` (SPEC §12): limits on top of each credential's patterns.
public struct TopicACL: Sendable, Equatable {
    public var publish: AccessList?
    public var subscribe: AccessList?

    public init(publish: AccessList? = nil, subscribe: AccessList? = nil) {
        self.publish = publish
        self.subscribe = subscribe
    }

    public func permits(_ principal: String, publishing: Bool) -> Bool {
        (publishing ? publish : subscribe)?.permits(principal) ?? true
    }

    var jsonValue: JSONValue {
        var members: [(String, JSONValue)] = []
        if let publish { members.append(("publish", publish.jsonValue)) }
        if let subscribe { members.append(("subscribe", subscribe.jsonValue)) }
        return .object(members)
    }

    static func decode(_ value: JSONValue) throws(RequestError) -> TopicACL {
        guard case .object = value else { throw .badRequest("acl must be an object like {\"publish\":{\"allow\":[...]}}") }
        let reader = FieldReader(value, frame: "acl")
        let acl = TopicACL(
            publish: try reader.value("publish").map { v throws(RequestError) in try AccessList.decode(v, what: "acl.publish") },
            subscribe: try reader.value("subscribe").map { v throws(RequestError) in try AccessList.decode(v, what: "acl.subscribe") })
        try reader.rejectUnknown(allowed: ["publish", "subscribe"])
        return acl
    }
}
