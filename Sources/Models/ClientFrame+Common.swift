extension ClientFrame {
    /// The frames a busy connection sends most, `PUBLISH` and `ACK`, read
    /// without the member list, `String` names and field lookups of the general decoder.
    ///
    /// - Returns: nil for any other frame, and for any frame the general decoder would refuse
    ///   or read differently (a repeated or unknown member, a `null`, a name with an escape, a
    ///   value that breaks a limit); ``decode(_:)`` then decodes it the general way, so that
    ///   both ways give the same frame and the same errors.
    static func decodeCommon(_ bytes: [UInt8]) -> ClientFrame? {
        var common = CommonFields()
        var parser = JSONParser(bytes)
        do {
            guard try parser.parsePlainNamedMembers({ name, inner throws(JSONError) in try common.read(name, &inner) }) else {
                return nil
            }
        } catch {
            return nil
        }
        return common.frame()
    }
}

/// The members of a `PUBLISH` or `ACK` frame as ``ClientFrame/decodeCommon(_:)`` reads them.
private struct CommonFields {
    enum Kind {
        case publish
        case ack
    }

    /// One bit per member, for repeats and for members the frame's type does not take.
    struct Seen: OptionSet {
        let rawValue: UInt16
        static let type = Seen(rawValue: 1 << 0)
        static let topic = Seen(rawValue: 1 << 1)
        static let rid = Seen(rawValue: 1 << 2)
        static let payload = Seen(rawValue: 1 << 3)
        static let key = Seen(rawValue: 1 << 4)
        static let id = Seen(rawValue: 1 << 5)
        static let group = Seen(rawValue: 1 << 6)
        static let partition = Seen(rawValue: 1 << 7)
        static let offset = Seen(rawValue: 1 << 8)
        static let headers = Seen(rawValue: 1 << 9)

        static let publish: Seen = [.type, .topic, .rid, .payload, .key, .id, .headers]
        static let ack: Seen = [.type, .topic, .rid, .group, .partition, .offset]
    }

    var kind: Kind?
    var seen: Seen = []
    var topic: String?
    var rid: String?
    var payload: RawJSON?
    var key: String?
    var headers: Headers?
    var id: String?
    var group: String?
    var partition: Int64?
    var offset: Int64?

    /// Reads one member; false when the frame must take the general way.
    mutating func read(_ name: Range<Int>, _ parser: inout JSONParser) throws(JSONError) -> Bool {
        let member: Seen
        if parser.bytes(name, equal: "type") {
            member = .type
            guard let value = parser.plainString() else { return false }
            if parser.bytes(value, equal: "PUBLISH") {
                kind = .publish
            } else if parser.bytes(value, equal: "ACK") {
                kind = .ack
            } else {
                return false
            }
        } else if parser.bytes(name, equal: "topic") {
            member = .topic
            guard let text = try Self.string(&parser) else { return false }
            topic = text
        } else if parser.bytes(name, equal: "rid") {
            member = .rid
            guard let text = try Self.string(&parser) else { return false }
            rid = text
        } else if parser.bytes(name, equal: "payload") {
            member = .payload
            payload = try parser.captureValue()
        } else if parser.bytes(name, equal: "id") {
            member = .id
            guard let text = try Self.string(&parser) else { return false }
            id = text
        } else if parser.bytes(name, equal: "key") {
            member = .key
            guard let text = try Self.string(&parser) else { return false }
            key = text
        } else if parser.bytes(name, equal: "headers") {
            member = .headers
            let value = try parser.parseValue()
            if case .null = value { return false }
            do { headers = try Headers.decode(value) } catch { return false }
        } else if parser.bytes(name, equal: "group") {
            member = .group
            guard let text = try Self.string(&parser) else { return false }
            group = text
        } else if parser.bytes(name, equal: "partition") {
            member = .partition
            guard let integer = try Self.integer(&parser) else { return false }
            partition = integer
        } else if parser.bytes(name, equal: "offset") {
            member = .offset
            guard let integer = try Self.integer(&parser) else { return false }
            offset = integer
        } else {
            return false
        }
        return seen.insert(member).inserted
    }

    private static func string(_ parser: inout JSONParser) throws(JSONError) -> String? {
        guard parser.peek() == UInt8(ascii: "\"") else { return nil }
        return try parser.parseString()
    }

    private static func integer(_ parser: inout JSONParser) throws(JSONError) -> Int64? {
        guard case .number(_, let integer?) = try parser.parseValue() else { return nil }
        return integer
    }

    /// The frame, when it is one the general decoder reads the same way without an error.
    func frame() -> ClientFrame? {
        // The general decoder's rid (a longer one is cut, not refused).
        let rid = rid.map { $0.utf8.count <= Limits.maxRidBytes ? $0 : String($0.prefix(Limits.maxRidBytes)) }
        guard let topic, Limits.nameProblem(topic, what: "topic") == nil else { return nil }
        switch kind {
        case .publish:
            guard Seen.publish.isSuperset(of: seen), let payload else { return nil }
            let request = PublishRequest(topic: topic, key: key, headers: headers, payload: payload, id: id, rid: rid)
            do { try request.validate() } catch { return nil }
            return .publish(request)
        case .ack:
            guard Seen.ack.isSuperset(of: seen), let partition, partition >= 0, partition <= Int64(Limits.maxPartitions - 1),
                let offset, offset >= 1
            else { return nil }
            if let group, Limits.nameProblem(group, what: "group") != nil { return nil }
            return .ack(AckRequest(topic: topic, partition: Int(partition), group: group, offset: offset, rid: rid))
        case nil:
            return nil
        }
    }
}
