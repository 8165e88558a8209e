/// Maps a key to a partition exactly as the original JavaScript sketch did.
public enum Partitioner {
    /// `h = 31*h + c` over the key's UTF-16 code units in 32-bit signed arithmetic.
    public static func hash(_ key: String) -> Int32 {
        var h: Int32 = 0
        for unit in key.utf16 {
            h = h &* 31 &+ Int32(unit)
        }
        return h
    }

    /// `abs(h) % partitions` (with JavaScript's `Math.abs`, so `Int32.min` stays positive).
    public static func partition(forKey key: String, partitions: Int) -> Int {
        guard partitions > 1 else { return 0 }
        let magnitude = Int64(hash(key)).magnitude
        return Int(magnitude % UInt64(partitions))
    }
}
