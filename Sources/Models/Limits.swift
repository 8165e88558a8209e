/// Size limits on the parts of a frame the broker stores or indexes.
public enum Limits {
    /// Topic and group names: 1–200 of `A–Z a–z 0–9 . _ -`.
    public static let maxNameLength = 200
    /// The longest credential an `AUTH` frame or `Authorization` header may carry.
    public static let maxTokenBytes = 16 * 1024
    public static let maxKeyBytes = 1024
    public static let maxIDBytes = 200
    public static let maxRidBytes = 200
    public static let maxHeaders = 64
    public static let maxHeaderNameBytes = 256
    public static let maxHeaderValueBytes = 4096
    public static let maxPartitions = 1024
    public static let maxInflight = 100_000

    /// Checks a topic or group name; returns a message saying what is wrong, or nil.
    public static func nameProblem(_ name: String, what: String) -> String? {
        if name.isEmpty { return "\(what) must not be empty" }
        if name.utf8.count > maxNameLength { return "\(what) is longer than \(maxNameLength) characters" }
        var name = name
        let allowed = name.withUTF8 { bytes in bytes.allSatisfy(isNameByte) }
        if allowed { return nil }
        return "\(what) '\(name.prefix(60))' may only hold letters, digits, '.', '_' and '-'"
    }

    @inline(__always)
    private static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            true
        default: false
        }
    }
}
