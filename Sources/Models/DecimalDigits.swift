/// Decimal digits of an integer written into raw memory: the one digit writer of the JSON
/// encoders (``JSONWriter/writeInt(_:into:)``, ``MessageFrame``). At most 20 bytes.
enum DecimalDigits {
    static func count(_ value: Int64) -> Int {
        var magnitude = value.magnitude
        var digits = 1
        while magnitude >= 10 {
            magnitude /= 10
            digits += 1
        }
        return value < 0 ? digits + 1 : digits
    }

    /// Writes `value` at `at` and returns the number of bytes written (``count(_:)``).
    static func write(_ value: Int64, at: UnsafeMutableRawPointer) -> Int {
        let length = count(value)
        var magnitude = value.magnitude
        var index = length
        repeat {
            index -= 1
            at.storeBytes(of: UInt8(ascii: "0") + UInt8(magnitude % 10), toByteOffset: index, as: UInt8.self)
            magnitude /= 10
        } while magnitude > 0
        if value < 0 { at.storeBytes(of: UInt8(ascii: "-"), as: UInt8.self) }
        return length
    }
}
