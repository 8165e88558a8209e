/// A JSON syntax error: what is wrong and at which byte.
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
        _ = try parseMembers(
            name: { parser throws(JSONError) in try parser.parseString() },
            { name, parser throws(JSONError) in
                try member(name, &parser)
                return true
            })
    }

    /// Parses a top-level object as ``parseObjectMembers(_:)`` does, but hands each member's
    /// name as the range of its bytes, without making a `String` (the hot path's frames). Stops
    /// and returns false when a name holds an escape or a non-ASCII byte, or when `member`
    /// returns false; true once the whole document was read.
    mutating func parsePlainNamedMembers(
        _ member: (Range<Int>, inout JSONParser) throws(JSONError) -> Bool
    ) throws(JSONError) -> Bool {
        try parseMembers(name: { parser throws(JSONError) in try parser.plainName() }, member)
    }

    /// The one loop over a top-level object's members: `name` reads a member's name (at its
    /// opening quote; nil stops the loop), `member` its value (false stops the loop). True once
    /// the whole document was read.
    @inline(__always)
    private mutating func parseMembers<Name>(
        name: (inout JSONParser) throws(JSONError) -> Name?,
        _ member: (Name, inout JSONParser) throws(JSONError) -> Bool
    ) throws(JSONError) -> Bool {
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
                guard let key = try name(&self) else { return false }
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                guard try member(key, &self) else { return false }
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if peek() == UInt8(ascii: "}") {
                    index += 1
                    break
                }
                throw error("expected ',' or '}'")
            }
        }
        skipWhitespace()
        guard index == bytes.count else { throw error("unexpected data after the JSON value") }
        return true
    }

    /// A member name (at its opening quote) as the range of its bytes; nil, when it holds an
    /// escape or a byte that is not plain ASCII.
    private mutating func plainName() throws(JSONError) -> Range<Int>? {
        index += 1
        let start = index
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") || byte < 0x20 || byte >= 0x80 { return nil }
            index += 1
        }
        guard index < bytes.count else { throw error("unterminated string") }
        index += 1
        return start..<(index - 1)
    }

    /// Whether `range` of the input holds exactly `word`'s bytes.
    func bytes(_ range: Range<Int>, equal word: StaticString) -> Bool {
        guard range.count == word.utf8CodeUnitCount else { return false }
        let base = word.utf8Start
        var position = range.lowerBound
        var offset = 0
        while position < range.upperBound {
            if bytes[position] != base[offset] { return false }
            position += 1
            offset += 1
        }
        return true
    }

    /// When the next value is a string without escapes or control characters, the range of
    /// its bytes (the index then after it); nil, the index unchanged, otherwise.
    mutating func plainString() -> Range<Int>? {
        guard peek() == UInt8(ascii: "\"") else { return nil }
        var position = index + 1
        let start = position
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                index = position + 1
                return start..<position
            }
            if byte == UInt8(ascii: "\\") || byte < 0x20 { return nil }
            position += 1
        }
        return nil
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
            if peek() == UInt8(ascii: "}") {
                index += 1
                depth -= 1
                return .object(members)
            }
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
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if peek() == UInt8(ascii: "}") {
                    index += 1
                    break
                }
                throw error("expected ',' or '}'")
            }
            depth -= 1
            return .object(members)
        case UInt8(ascii: "["):
            try enter()
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
                depth -= 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try parseValue())
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if peek() == UInt8(ascii: "]") {
                    index += 1
                    break
                }
                throw error("expected ',' or ']'")
            }
            depth -= 1
            return .array(items)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
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
            if peek() == UInt8(ascii: "}") {
                index += 1
                depth -= 1
                return
            }
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
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if peek() == UInt8(ascii: "}") {
                    index += 1
                    break
                }
                throw error("expected ',' or '}'")
            }
            depth -= 1
        case UInt8(ascii: "["):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
                depth -= 1
                return
            }
            while true {
                skipWhitespace()
                try skipValue()
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if peek() == UInt8(ascii: "]") {
                    index += 1
                    break
                }
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
        // Integers of up to 18 digits (every offset, partition and count) without text.
        if isInteger, index - start <= 18 {
            var value: Int64 = 0
            var position = start
            let negative = bytes[position] == UInt8(ascii: "-")
            if negative { position += 1 }
            while position < index {
                value = value * 10 + Int64(bytes[position] - 0x30)
                position += 1
            }
            if negative { value = -value }
            return .number(Double(value), integer: value)
        }
        let text = Self.asciiString(bytes, start..<index)
        let double = Double(text) ?? .nan
        if isInteger, let integer = Int64(text) { return .number(double, integer: integer) }
        if double.isFinite, double.rounded() == double, abs(double) < 9.0e15 {
            return .number(double, integer: Int64(double))
        }
        return .number(double, integer: nil)
    }

    /// A string from bytes known to be ASCII.
    private static func asciiString(_ bytes: [UInt8], _ range: Range<Int>) -> String {
        bytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[range]), as: UTF8.self) }
    }

    /// Where the run of plain string bytes from `start` on ends (at a quote, a backslash, a
    /// control character or the input's end), and whether it held only ASCII: the bulk of
    /// every string, scanned without a bounds check per byte.
    private func plainRun(from start: Int) -> (end: Int, ascii: Bool) {
        bytes.withUnsafeBufferPointer { buffer in
            var position = start
            var seen: UInt8 = 0
            while position < buffer.count {
                let byte = buffer[position]
                if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte < 0x20 { break }
                seen |= byte
                position += 1
            }
            return (position, seen < 0x80)
        }
    }

    private mutating func skipString() throws(JSONError) {
        index += 1
        index = plainRun(from: index).end
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                return
            }
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
        let run = plainRun(from: index)
        index = run.end
        var ascii = run.ascii
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                // ASCII needs no validation; decoding from a buffer pointer is specialized, while
                // the generic `String(validating:as:)` looks up type metadata at run time.
                let s = ascii ? Self.asciiString(bytes, start..<index) : String(validating: bytes[start..<index], as: UTF8.self)
                index += 1
                guard let s else { throw error("string is not valid UTF-8") }
                return s
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error("control character in string") }
            if byte >= 0x80 { ascii = false }
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
            if byte != UInt8(ascii: "\\") {
                out.append(byte)
                index += 1
                continue
            }
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
