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

/// The bytes of one complete, validated JSON value, passed through without re-encoding.
public struct RawJSON: Sendable, Equatable, Hashable {
    public let bytes: [UInt8]

    /// Wraps bytes the caller knows to be one valid JSON value (e.g. read back from the store).
    public init(trusted bytes: [UInt8]) { self.bytes = bytes }

    /// Validates that `bytes` hold exactly one JSON value (surrounding whitespace allowed).
    public init(validating bytes: [UInt8]) throws(JSONError) {
        var parser = JSONParser(bytes)
        parser.skipWhitespace()
        let start = parser.index
        try parser.skipValue()
        let end = parser.index
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw JSONError(message: "unexpected data after the JSON value", offset: parser.index) }
        self.bytes = Array(bytes[start..<end])
    }

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    /// A payload given as JSON text, refused with `bad_request` when it is not valid JSON.
    public static func payload(_ text: String) throws(RequestError) -> RawJSON {
        do {
            return try RawJSON(validating: Array(text.utf8))
        } catch {
            throw .badRequest("payload is not valid JSON: \(error)")
        }
    }

    /// Parses the bytes into a ``JSONValue`` (for tooling and tests, not the hot path).
    public func parsed() throws(JSONError) -> JSONValue {
        var parser = JSONParser(bytes)
        return try parser.parseDocument()
    }
}

public struct JSONError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "invalid JSON at byte \(offset): \(message)" }
}

/// A strict RFC 8259 parser over UTF-8 bytes.
public struct JSONParser {
    let bytes: [UInt8]
    public private(set) var index: Int = 0
    private var depth = 0
    static let maxDepth = 128

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Parses one whole document (one value, only whitespace around it).
    public mutating func parseDocument() throws(JSONError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw error("unexpected data after the JSON value") }
        return value
    }

    /// Parses a top-level object, handing each member's value range to `member` so that the
    /// caller decides which members to parse and which to keep as raw bytes.
    public mutating func parseObjectMembers(
        _ member: (String, inout JSONParser) throws(JSONError) -> Void
    ) throws(JSONError) {
        skipWhitespace()
        guard peek() == UInt8(ascii: "{") else { throw error("expected an object") }
        index += 1
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
        } else {
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let key = try parseString()
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                try member(key, &self)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") { index += 1; continue }
                if peek() == UInt8(ascii: "}") { index += 1; break }
                throw error("expected ',' or '}'")
            }
        }
        skipWhitespace()
        guard index == bytes.count else { throw error("unexpected data after the JSON value") }
    }

    /// Skips one value and returns its exact bytes.
    public mutating func captureValue() throws(JSONError) -> RawJSON {
        let start = index
        try skipValue()
        return RawJSON(trusted: Array(bytes[start..<index]))
    }

    func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    func error(_ message: String) -> JSONError { JSONError(message: message, offset: index) }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    public mutating func parseValue() throws(JSONError) -> JSONValue {
        guard let byte = peek() else { throw error("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            var members: [(String, JSONValue)] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "}") { index += 1; depth -= 1; return .object(members) }
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let key = try parseString()
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                members.append((key, try parseValue()))
                skipWhitespace()
                if peek() == UInt8(ascii: ",") { index += 1; continue }
                if peek() == UInt8(ascii: "}") { index += 1; break }
                throw error("expected ',' or '}'")
            }
            depth -= 1
            return .object(members)
        case UInt8(ascii: "["):
            try enter()
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") { index += 1; depth -= 1; return .array(items) }
            while true {
                skipWhitespace()
                items.append(try parseValue())
                skipWhitespace()
                if peek() == UInt8(ascii: ",") { index += 1; continue }
                if peek() == UInt8(ascii: "]") { index += 1; break }
                throw error("expected ',' or ']'")
            }
            depth -= 1
            return .array(items)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try literal("true"); return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false"); return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null"); return .null
        default:
            return try parseNumber()
        }
    }

    /// Validates and skips one value without building it.
    mutating func skipValue() throws(JSONError) {
        guard let byte = peek() else { throw error("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "}") { index += 1; depth -= 1; return }
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
                try skipString()
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                try skipValue()
                skipWhitespace()
                if peek() == UInt8(ascii: ",") { index += 1; continue }
                if peek() == UInt8(ascii: "}") { index += 1; break }
                throw error("expected ',' or '}'")
            }
            depth -= 1
        case UInt8(ascii: "["):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") { index += 1; depth -= 1; return }
            while true {
                skipWhitespace()
                try skipValue()
                skipWhitespace()
                if peek() == UInt8(ascii: ",") { index += 1; continue }
                if peek() == UInt8(ascii: "]") { index += 1; break }
                throw error("expected ',' or ']'")
            }
            depth -= 1
        case UInt8(ascii: "\""):
            try skipString()
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default: _ = try parseNumber()
        }
    }

    private mutating func enter() throws(JSONError) {
        depth += 1
        if depth > Self.maxDepth { throw error("nesting deeper than \(Self.maxDepth)") }
    }

    private mutating func literal(_ word: StaticString) throws(JSONError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("invalid literal") }
        let base = word.utf8Start
        for i in 0..<count where bytes[index + i] != base[i] { throw error("invalid literal") }
        index += count
    }

    private mutating func parseNumber() throws(JSONError) -> JSONValue {
        let start = index
        var isInteger = true
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), first >= 0x30, first <= 0x39 else { throw error("invalid value") }
        if first == 0x30 {
            index += 1
        } else {
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw error("invalid number") }
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw error("invalid number") }
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        let double = Double(text) ?? .nan
        if isInteger, let integer = Int64(text) { return .number(double, integer: integer) }
        if double.isFinite, double.rounded() == double, abs(double) < 9.0e15 {
            return .number(double, integer: Int64(double))
        }
        return .number(double, integer: nil)
    }

    private mutating func skipString() throws(JSONError) {
        index += 1
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { index += 1; return }
            if byte == UInt8(ascii: "\\") {
                index += 1
                guard let escaped = peek() else { break }
                if escaped == UInt8(ascii: "u") {
                    guard index + 4 < bytes.count, (1...4).allSatisfy({ Self.hexValue(bytes[index + $0]) != nil }) else {
                        throw error("invalid \\u escape")
                    }
                    index += 5
                } else {
                    guard Self.simpleEscape(escaped) != nil else { throw error("invalid escape") }
                    index += 1
                }
                continue
            }
            if byte < 0x20 { throw error("control character in string") }
            index += 1
        }
        throw error("unterminated string")
    }

    mutating func parseString() throws(JSONError) -> String {
        index += 1
        let start = index
        // Fast path: no escapes.
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let s = String(validating: bytes[start..<index], as: UTF8.self)
                index += 1
                guard let s else { throw error("string is not valid UTF-8") }
                return s
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error("control character in string") }
            index += 1
        }
        var out = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw error("string is not valid UTF-8") }
                return s
            }
            if byte < 0x20 { throw error("control character in string") }
            if byte != UInt8(ascii: "\\") { out.append(byte); index += 1; continue }
            index += 1
            guard let escaped = peek() else { break }
            if let simple = Self.simpleEscape(escaped) {
                out.append(simple)
                index += 1
                continue
            }
            guard escaped == UInt8(ascii: "u") else { throw error("invalid escape") }
            var scalar = try readHex4()
            if (0xD800...0xDBFF).contains(scalar) {
                guard peek() == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u") else {
                    throw error("unpaired surrogate")
                }
                index += 1
                let low = try readHex4()
                guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate") }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if (0xDC00...0xDFFF).contains(scalar) {
                throw error("unpaired surrogate")
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw error("invalid code point") }
            out.append(contentsOf: Array(String(Character(unicode)).utf8))
        }
        throw error("unterminated string")
    }

    /// Reads `uXXXX` (index on the `u`) and returns the code unit.
    private mutating func readHex4() throws(JSONError) -> UInt32 {
        guard index + 4 < bytes.count else { throw error("invalid \\u escape") }
        var value: UInt32 = 0
        for offset in 1...4 {
            guard let digit = Self.hexValue(bytes[index + offset]) else { throw error("invalid \\u escape") }
            value = value << 4 | UInt32(digit)
        }
        index += 5
        return value
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x41...0x46: byte - 0x41 + 10
        case 0x61...0x66: byte - 0x61 + 10
        default: nil
        }
    }

    static func simpleEscape(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "\""): 0x22
        case UInt8(ascii: "\\"): 0x5C
        case UInt8(ascii: "/"): 0x2F
        case UInt8(ascii: "b"): 0x08
        case UInt8(ascii: "f"): 0x0C
        case UInt8(ascii: "n"): 0x0A
        case UInt8(ascii: "r"): 0x0D
        case UInt8(ascii: "t"): 0x09
        default: nil
        }
    }
}

/// Appends JSON text to a byte array; the encoder behind every outbound frame.
public enum JSONWriter {
    public static func writeString(_ string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(0x5C); out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
            case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                out.append(contentsOf: Array("\\u00".utf8))
                let hex = Array("0123456789abcdef".utf8)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    public static func writeInt(_ value: some BinaryInteger, into out: inout [UInt8]) {
        out.append(contentsOf: String(value).utf8)
    }

    public static func write(_ value: JSONValue, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .number(let d, let integer):
            if let integer { writeInt(integer, into: &out) } else { out.append(contentsOf: "\(d)".utf8) }
        case .string(let s): writeString(s, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (i, (key, item)) in members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(item, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }
}

/// Builds one JSON object member by member.
public struct JSONObjectWriter {
    public private(set) var bytes: [UInt8]
    private var first = true

    public init(capacity: Int = 128) {
        bytes = []
        bytes.reserveCapacity(capacity)
        bytes.append(UInt8(ascii: "{"))
    }

    private mutating func key(_ name: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    public mutating func string(_ name: StaticString, _ value: String) {
        key(name); JSONWriter.writeString(value, into: &bytes)
    }

    public mutating func optionalString(_ name: StaticString, _ value: String?, nullIfMissing: Bool = false) {
        if let value { string(name, value) } else if nullIfMissing { key(name); bytes.append(contentsOf: "null".utf8) }
    }

    public mutating func int(_ name: StaticString, _ value: some BinaryInteger) {
        key(name); JSONWriter.writeInt(value, into: &bytes)
    }

    public mutating func double(_ name: StaticString, _ value: Double) {
        key(name)
        if value.isFinite { bytes.append(contentsOf: String(value).utf8) } else { bytes.append(contentsOf: "null".utf8) }
    }

    public mutating func bool(_ name: StaticString, _ value: Bool) {
        key(name); bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    public mutating func raw(_ name: StaticString, _ value: [UInt8]) {
        key(name); bytes.append(contentsOf: value)
    }

    public mutating func raw(_ name: String, _ value: [UInt8]) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        JSONWriter.writeString(name, into: &bytes)
        bytes.append(UInt8(ascii: ":"))
        bytes.append(contentsOf: value)
    }

    public mutating func value(_ name: StaticString, _ value: JSONValue) {
        key(name); JSONWriter.write(value, into: &bytes)
    }

    public mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}
