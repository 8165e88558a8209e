/// Appends JSON text to a byte array; the encoder behind every outbound frame.
public enum JSONWriter {
    public static func writeString(_ string: String, into out: inout [UInt8]) {
        // A native string lends its bytes without a copy of the string (`withUTF8` would
        // want a `var`, and with it a retain); a bridged one is made native first.
        if string.utf8.withContiguousStorageIfAvailable({ writeString(utf8: $0, into: &out) }) == nil {
            var native = string
            native.withUTF8 { writeString(utf8: $0, into: &out) }
        }
    }

    private static func writeString(utf8: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Runs of bytes that need no escape are appended in one copy.
        var runStart = 0
        for index in 0..<utf8.count {
            let byte = utf8[index]
            if byte >= 0x20 && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") { continue }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
            appendEscaped(byte, into: &out)
            runStart = index + 1
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<utf8.count]))
        out.append(UInt8(ascii: "\""))
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private static func appendEscaped(_ byte: UInt8, into out: inout [UInt8]) {
        out.append(0x5C)
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(byte)
        case 0x0A: out.append(UInt8(ascii: "n"))
        case 0x0D: out.append(UInt8(ascii: "r"))
        case 0x09: out.append(UInt8(ascii: "t"))
        default:
            out.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0xF)])
        }
    }

    public static func writeInt(_ value: some BinaryInteger, into out: inout [UInt8]) {
        guard let value = Int64(exactly: value) else {
            out.append(contentsOf: String(value).utf8)
            return
        }
        if value >= 0 && value < 10 {
            out.append(UInt8(ascii: "0") + UInt8(value))
            return
        }
        // Into a small buffer, then one append (no String made).
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            let length = DecimalDigits.write(value, at: UnsafeMutableRawPointer(digits.baseAddress!))
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[0..<length]))
        }
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
        key(name)
        JSONWriter.writeString(value, into: &bytes)
    }

    public mutating func optionalString(_ name: StaticString, _ value: String?, nullIfMissing: Bool = false) {
        if let value {
            string(name, value)
        } else if nullIfMissing {
            key(name)
            bytes.append(contentsOf: "null".utf8)
        }
    }

    public mutating func int(_ name: StaticString, _ value: some BinaryInteger) {
        key(name)
        JSONWriter.writeInt(value, into: &bytes)
    }

    public mutating func double(_ name: StaticString, _ value: Double) {
        key(name)
        if value.isFinite { bytes.append(contentsOf: String(value).utf8) } else { bytes.append(contentsOf: "null".utf8) }
    }

    public mutating func bool(_ name: StaticString, _ value: Bool) {
        key(name)
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    public mutating func raw(_ name: StaticString, _ value: [UInt8]) {
        key(name)
        bytes.append(contentsOf: value)
    }

    public mutating func raw(_ name: String, _ value: [UInt8]) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        JSONWriter.writeString(name, into: &bytes)
        bytes.append(UInt8(ascii: ":"))
        bytes.append(contentsOf: value)
    }

    public mutating func value(_ name: StaticString, _ value: JSONValue) {
        key(name)
        JSONWriter.write(value, into: &bytes)
    }

    public mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}
