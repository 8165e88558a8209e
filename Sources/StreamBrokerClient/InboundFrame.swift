import Models

/// The fields of a server-to-client frame (SPEC §5) that the client reads; the envelope's
/// payload stays raw bytes.
struct InboundFrame {
    struct Envelope {
        var id = ""
        var ts: Int64 = 0
        var key: String?
        var headers: Headers?
        var payload = RawJSON(trusted: Array("null".utf8))
    }

    var type = ""
    var rid: String?
    var code: String?
    var message: String?
    var topic: String?
    var group: String?
    var partition: Int?
    var offset: Int64?
    var attempt: Int?
    var id: String?
    var duplicate = false
    var envelope: Envelope?

    private init() {}

    init(_ bytes: [UInt8]) throws(JSONError) {
        var parser = JSONParser(bytes)
        var frame = InboundFrame()
        try parser.parseObjectMembers { (name, parser) throws(JSONError) in
            switch name {
            case "envelope":
                frame.envelope = try Self.envelope(parser.captureValue())
            default:
                let value = try parser.parseValue()
                switch name {
                case "type": frame.type = value.stringValue ?? ""
                case "rid": frame.rid = value.stringValue
                case "code": frame.code = value.stringValue
                case "message": frame.message = value.stringValue
                case "topic": frame.topic = value.stringValue
                case "group": frame.group = value.stringValue
                case "partition": frame.partition = value.intValue.map { Int($0) }
                case "offset": frame.offset = value.intValue
                case "attempt": frame.attempt = value.intValue.map { Int($0) }
                case "id": frame.id = value.stringValue
                case "duplicate": frame.duplicate = value == .bool(true)
                default: break
                }
            }
        }
        self = frame
    }

    private static func envelope(_ raw: RawJSON) throws(JSONError) -> Envelope {
        var parser = JSONParser(raw.bytes)
        var envelope = Envelope()
        try parser.parseObjectMembers { (name, parser) throws(JSONError) in
            switch name {
            case "payload":
                envelope.payload = try parser.captureValue()
            default:
                let value = try parser.parseValue()
                switch name {
                case "id": envelope.id = value.stringValue ?? ""
                case "ts": envelope.ts = value.intValue ?? 0
                case "key": envelope.key = value.stringValue
                case "headers": envelope.headers = try? Headers.decode(value)
                default: break
                }
            }
        }
        return envelope
    }

    /// The number of a request id the client made (`p12`, `s3`), when it has the prefix.
    func requestNumber(prefix: Character) -> Int? {
        guard let rid, rid.first == prefix else { return nil }
        return Int(rid.dropFirst())
    }
}

extension JSONValue {
    var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    var intValue: Int64? {
        if case .number(_, let integer) = self { return integer }
        return nil
    }
}
