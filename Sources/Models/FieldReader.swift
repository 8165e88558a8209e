/// Reads typed fields out of a JSON object, naming the field and the frame in every error.
struct FieldReader {
    let members: [(String, JSONValue)]
    let frame: String
    let rid: String?

    init(_ value: JSONValue, frame: String, rid: String? = nil) {
        if case .object(let members) = value { self.members = members } else { self.members = [] }
        self.frame = frame
        self.rid = rid
    }

    init(members: [(String, JSONValue)], frame: String, rid: String?) {
        self.members = members
        self.frame = frame
        self.rid = rid
    }

    func value(_ name: String) -> JSONValue? {
        guard let found = members.first(where: { $0.0 == name })?.1 else { return nil }
        if case .null = found { return nil }
        return found
    }

    func fail(_ message: String) -> RequestError { .badRequest(message, rid: rid) }

    func requiredName(_ name: String) throws(RequestError) -> String {
        guard let text = try optionalString(name) else { throw fail("\(frame) needs a \(name)") }
        if let problem = Limits.nameProblem(text, what: name) { throw fail(problem) }
        return text
    }

    func optionalName(_ name: String) throws(RequestError) -> String? {
        guard let text = try optionalString(name) else { return nil }
        if let problem = Limits.nameProblem(text, what: name) { throw fail(problem) }
        return text
    }

    func optionalString(_ name: String, maxBytes: Int? = nil) throws(RequestError) -> String? {
        guard let value = value(name) else { return nil }
        guard case .string(let text) = value else { throw fail("\(frame) \(name) must be a string, not \(value.kindName)") }
        if let maxBytes, text.utf8.count > maxBytes { throw fail("\(frame) \(name) is longer than \(maxBytes) bytes") }
        return text
    }

    func optionalInt(_ name: String, min: Int64 = .min, max: Int64 = .max) throws(RequestError) -> Int64? {
        guard let value = value(name) else { return nil }
        guard case .number(_, let integer?) = value else {
            throw fail("\(frame) \(name) must be an integer, not \(value.kindName == "a number" ? "a fraction" : value.kindName)")
        }
        if integer < min { throw fail("\(frame) \(name) must be at least \(min), got \(integer)") }
        if integer > max { throw fail("\(frame) \(name) must be at most \(max), got \(integer)") }
        return integer
    }

    func requiredInt(_ name: String, min: Int64 = .min, max: Int64 = .max) throws(RequestError) -> Int64 {
        guard let integer = try optionalInt(name, min: min, max: max) else { throw fail("\(frame) needs \(name)") }
        return integer
    }

    func optionalBool(_ name: String) throws(RequestError) -> Bool? {
        guard let value = value(name) else { return nil }
        guard case .bool(let flag) = value else { throw fail("\(frame) \(name) must be true or false, not \(value.kindName)") }
        return flag
    }

    func optionalIntArray(_ name: String, min: Int64) throws(RequestError) -> [Int64]? {
        guard let value = value(name) else { return nil }
        guard case .array(let items) = value else { throw fail("\(frame) \(name) must be an array of integers") }
        var result: [Int64] = []
        for item in items {
            guard case .number(_, let integer?) = item, integer >= min else {
                throw fail("\(frame) \(name) must hold integers ≥ \(min)")
            }
            result.append(integer)
        }
        return result
    }

    func optionalStringArray(_ name: String) throws(RequestError) -> [String]? {
        guard let value = value(name) else { return nil }
        guard case .array(let items) = value else { throw fail("\(frame) \(name) must be an array of strings") }
        var result: [String] = []
        for item in items {
            guard case .string(let text) = item else { throw fail("\(frame) \(name) must hold strings, not \(item.kindName)") }
            result.append(text)
        }
        return result
    }

    func rejectUnknown(allowed: Set<String>) throws(RequestError) {
        if let unknown = members.first(where: { !allowed.contains($0.0) }) {
            throw fail("\(frame) has an unknown field '\(unknown.0.prefix(60))'")
        }
    }
}
