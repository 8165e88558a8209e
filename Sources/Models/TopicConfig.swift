/// A topic's configuration (SPEC §3 `topic_configs`).
public struct TopicConfig: Sendable, Equatable {
    public var topic: String
    public var partitions: Int
    public var retentionMs: Int64?
    public var maxAttempts: Int?
    public var ackTimeoutMs: Int64?
    public var redeliveryBackoffMs: [Int64]?
    /// Who may publish and subscribe, on top of each credential's patterns (SPEC §12).
    public var acl: TopicACL?

    public static let defaultMaxAttempts = 5

    public init(
        topic: String, partitions: Int = 1, retentionMs: Int64? = nil, maxAttempts: Int? = nil,
        ackTimeoutMs: Int64? = nil, redeliveryBackoffMs: [Int64]? = nil, acl: TopicACL? = nil
    ) {
        self.topic = topic
        self.partitions = partitions
        self.retentionMs = retentionMs
        self.maxAttempts = maxAttempts
        self.ackTimeoutMs = ackTimeoutMs
        self.redeliveryBackoffMs = redeliveryBackoffMs
        self.acl = acl
    }

    public var effectiveMaxAttempts: Int { maxAttempts ?? Self.defaultMaxAttempts }

    /// The delay before attempt `attempt + 1` after a timeout or a NACK without `delay_ms`.
    public func backoff(afterAttempt attempt: Int) -> Int64 {
        guard let steps = redeliveryBackoffMs, !steps.isEmpty else { return 0 }
        return steps[min(max(attempt - 1, 0), steps.count - 1)]
    }

    public var jsonValue: JSONValue {
        var members: [(String, JSONValue)] = [
            ("topic", .string(topic)),
            ("partitions", .number(Double(partitions), integer: Int64(partitions))),
        ]
        if let retentionMs { members.append(("retentionMs", .number(Double(retentionMs), integer: retentionMs))) }
        if let maxAttempts { members.append(("maxAttempts", .number(Double(maxAttempts), integer: Int64(maxAttempts)))) }
        if let ackTimeoutMs { members.append(("ackTimeoutMs", .number(Double(ackTimeoutMs), integer: ackTimeoutMs))) }
        if let redeliveryBackoffMs {
            members.append(("redeliveryBackoffMs", .array(redeliveryBackoffMs.map { .number(Double($0), integer: $0) })))
        }
        if let acl { members.append(("acl", acl.jsonValue)) }
        return .object(members)
    }

    /// Decodes a config object; `topic` may come from the URL instead of the body.
    public static func decode(_ value: JSONValue, topic fallbackTopic: String? = nil) throws(RequestError) -> TopicConfig {
        guard case .object = value else { throw .badRequest("a topic config must be a JSON object") }
        let reader = FieldReader(value, frame: "topic config")
        let topic = try reader.optionalString("topic") ?? fallbackTopic
        guard let topic else { throw .badRequest("topic config needs a topic") }
        if let problem = Limits.nameProblem(topic, what: "topic") { throw .badRequest(problem) }
        let partitions = try reader.optionalInt("partitions", min: 1, max: Int64(Limits.maxPartitions)) ?? 1
        let config = TopicConfig(
            topic: topic,
            partitions: Int(partitions),
            retentionMs: try reader.optionalInt("retentionMs", min: 1),
            maxAttempts: try reader.optionalInt("maxAttempts", min: 1, max: 1000).map(Int.init),
            ackTimeoutMs: try reader.optionalInt("ackTimeoutMs", min: 1),
            redeliveryBackoffMs: try reader.optionalIntArray("redeliveryBackoffMs", min: 0),
            acl: try reader.value("acl").map { value throws(RequestError) in try TopicACL.decode(value) }
        )
        try reader.rejectUnknown(allowed: ["topic", "partitions", "retentionMs", "maxAttempts", "ackTimeoutMs", "redeliveryBackoffMs", "acl"])
        return config
    }
}
