/// An event to append, as a publisher gave it: by a `PUBLISH` frame, `POST /topics/{t}/events`,
/// an outbox row or the Swift ``DirectPublisher``. Every way in builds one and calls
/// ``validate()``, so the limits are the same whichever way an event arrives.
public struct PublishRequest: Sendable, Equatable {
    public var topic: String
    public var key: String?
    public var headers: Headers?
    public var payload: RawJSON
    /// The publisher's event id (idempotent publish); nil: the broker makes a UUIDv7.
    public var id: String?
    /// The correlation id of the frame, echoed in its reply.
    public var rid: String?
    /// The authenticated client that publishes it (set by the gateway, never read from the
    /// wire): the topic's ACL applies, and the event is stamped `x-bus-principal`.
    public var principal: String?

    public init(topic: String, key: String? = nil, headers: Headers? = nil, payload: RawJSON, id: String? = nil, rid: String? = nil) {
        self.topic = topic
        self.key = key
        self.headers = headers
        self.payload = payload
        self.id = id
        self.rid = rid
    }

    /// The rules of SPEC §3 and §5 for what is stored and indexed: a valid topic name, a key of
    /// at most ``Limits/maxKeyBytes``, an id of 1–``Limits/maxIDBytes`` bytes, and the header
    /// limits. The payload is valid JSON by construction of ``RawJSON``; whether the store can
    /// hold it is the store's `validatePayload`.
    /// - Throws: ``RequestError`` `bad_request` naming the field, with this request's `rid`.
    public func validate() throws(RequestError) {
        if let problem = Limits.nameProblem(topic, what: "topic") { throw .badRequest(problem, rid: rid) }
        if let key, key.utf8.count > Limits.maxKeyBytes {
            throw .badRequest("key is longer than \(Limits.maxKeyBytes) bytes", rid: rid)
        }
        if let id, id.isEmpty || id.utf8.count > Limits.maxIDBytes {
            throw .badRequest("id must be 1–\(Limits.maxIDBytes) bytes", rid: rid)
        }
        if let headers, let problem = headers.problem { throw .badRequest(problem, rid: rid) }
    }

    /// Reads `{topic?, key?, headers?, id?}` (the payload already captured as raw bytes) and
    /// validates the result: the body of a `PUBLISH` frame, or of an HTTP publish whose topic
    /// comes from the path.
    static func decode(
        members: [(String, JSONValue)], payload: RawJSON?, topic pathTopic: String?, frame: String, rid: String?
    ) throws(RequestError) -> PublishRequest {
        let reader = FieldReader(members: members, frame: frame, rid: rid)
        let topic: String
        if let pathTopic { topic = pathTopic } else { topic = try reader.requiredName("topic") }
        guard let payload else { throw .badRequest("\(frame) needs a payload", rid: rid) }
        var headers: Headers?
        if let value = reader.value("headers") {
            do { headers = try Headers.decode(value) } catch { throw .badRequest(error.message, rid: rid) }
        }
        let request = PublishRequest(
            topic: topic, key: try reader.optionalString("key"), headers: headers, payload: payload,
            id: try reader.optionalString("id"), rid: rid)
        try request.validate()
        return request
    }

    /// Decodes the body of `POST /topics/{topic}/events`: `{key?, headers?, payload, id?}`.
    public static func decodeHTTP(_ bytes: [UInt8], topic: String) throws(RequestError) -> PublishRequest {
        var members: [(String, JSONValue)] = []
        var payload: RawJSON?
        var parser = JSONParser(bytes)
        do {
            try parser.parseObjectMembers { (key: String, inner: inout JSONParser) throws(JSONError) in
                if key == "payload" { payload = try inner.captureValue() } else { members.append((key, try inner.parseValue())) }
            }
        } catch {
            throw .badRequest("body must be a JSON object {key?, headers?, payload, id?}: \(error)")
        }
        return try decode(members: members, payload: payload, topic: topic, frame: "event", rid: nil)
    }
}
