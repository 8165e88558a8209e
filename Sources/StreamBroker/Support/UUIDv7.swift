import Foundation

/// Time-ordered UUIDs (RFC 9562 version 7) for event ids.
enum UUIDv7 {
    private static let hex = Array("0123456789abcdef".utf8)

    static func make(now: Date = Date()) -> String {
        var generator = SystemRandomNumberGenerator()
        let random = generator.next() as UInt64
        let random2 = generator.next() as UInt16
        let ms = UInt64(now.timeIntervalSince1970 * 1000)
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: ms >> (8 * (5 - UInt64(i)))) }
        bytes[6] = UInt8(truncatingIfNeeded: random2 >> 8)
        bytes[7] = UInt8(truncatingIfNeeded: random2)
        for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: random >> (8 * UInt64(i))) }
        bytes[6] = (bytes[6] & 0x0F) | 0x70
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        return String(unsafeUninitializedCapacity: 36) { out in
            var position = 0
            for (index, byte) in bytes.enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 {
                    out[position] = UInt8(ascii: "-")
                    position += 1
                }
                out[position] = hex[Int(byte >> 4)]
                out[position + 1] = hex[Int(byte & 0x0F)]
                position += 2
            }
            return position
        }
    }
}
