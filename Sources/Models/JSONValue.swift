/// A parsed JSON value, used for the small structured parts of frames (headers, `from`, filters).
///
/// Payloads never become a `JSONValue`: they stay ``RawJSON`` bytes from the frame to the wire.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// A number, with its integer value when it has one that fits in `Int64`.
    case number(Double, integer: Int64?)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a, _), .number(let b, _)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// An integer number.
    public static func int(_ value: some BinaryInteger) -> JSONValue { .number(Double(value), integer: Int64(value)) }

    /// A number that may have a fraction.
    public static func double(_ value: Double) -> JSONValue { .number(value, integer: nil) }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    /// A short name of the value's kind, for error messages.
    public var kindName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    /// The value encoded as compact JSON.
    public var jsonBytes: [UInt8] {
        var out: [UInt8] = []
        JSONWriter.write(self, into: &out)
        return out
    }
}
