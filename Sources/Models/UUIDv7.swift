import Foundation
import Synchronization

/// Time-ordered UUIDs (RFC 9562 version 7) for event ids: the broker's, and the Swift client's
/// for its publishes, so the store's `(topic, id)` index grows at its end instead of at random
/// places.
///
/// The 74 bits after the millisecond timestamp start at a random value in each new millisecond
/// and count up by one within it (RFC 9562 §6.2, method 2: monotonic random), so the ids of
/// one generator are unique and strictly increasing; a counter that runs out moves on to the
/// next millisecond. The random bits come from a fast generator seeded once from the system's,
/// not from two `getrandom` calls per id.
public final class UUIDv7: Sendable {
    private struct State {
        var rng: Xoshiro256StarStar
        var lastMs: UInt64 = 0
        /// The 12 bits of `rand_a` above the 62 bits of `rand_b`.
        var high: UInt16 = 0
        var low: UInt64 = 0
    }

    /// The generator event ids come from.
    public static let shared = UUIDv7()

    private static let hex = Array("0123456789abcdef".utf8)
    private static let lowMask: UInt64 = (1 << 62) - 1
    private static let highMask: UInt16 = (1 << 12) - 1

    private let state: Mutex<State>

    /// - Parameter seed: fixes the random bits (tests); nil: seeded from the system's generator.
    public init(seed: UInt64? = nil) {
        var system = SystemRandomNumberGenerator()
        state = Mutex(State(rng: Xoshiro256StarStar(seed: seed ?? system.next())))
    }

    /// A new id from the shared generator.
    public static func make() -> String {
        shared.next()
    }

    /// A new id for the time `now` exactly, from a generator of its own (tests; the shared one
    /// never goes back before an id it made).
    public static func make(now: Date) -> String {
        UUIDv7().next(now: now)
    }

    /// A new id, greater than every earlier one of this generator.
    public func next(now: Date = Date()) -> String {
        let clockMs = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        let (ms, high, low) = state.withLock { state -> (UInt64, UInt16, UInt64) in
            if clockMs > state.lastMs {
                state.lastMs = clockMs
                let random = state.rng.next()
                state.high = UInt16(truncatingIfNeeded: random >> 52) & Self.highMask
                // The top bit of the counter starts clear, so a millisecond has room for at
                // least 2^61 ids before it spills into the next one.
                state.low = state.rng.next() & (Self.lowMask >> 1)
            } else if state.low < Self.lowMask {
                // The same millisecond (or the clock went back): count up.
                state.low += 1
            } else if state.high < Self.highMask {
                state.high += 1
                state.low = 0
            } else {
                state.lastMs += 1
                state.high = 0
                state.low = 0
            }
            return (state.lastMs, state.high, state.low)
        }
        return Self.format(ms: ms, high: high, low: low)
    }

    private static func format(ms: UInt64, high: UInt16, low: UInt64) -> String {
        // 48 bits of milliseconds, version 7, 12 bits, variant 0b10, 62 bits.
        let upper = (ms & 0xFFFF_FFFF_FFFF) << 16 | 0x7000 | UInt64(high)
        let lower = 0x8000_0000_0000_0000 | low
        return String(unsafeUninitializedCapacity: 36) { out in
            var position = 0
            for index in 0..<16 {
                if index == 4 || index == 6 || index == 8 || index == 10 {
                    out[position] = UInt8(ascii: "-")
                    position += 1
                }
                let word = index < 8 ? upper : lower
                let byte = UInt8(truncatingIfNeeded: word >> (8 * UInt64(7 - index % 8)))
                out[position] = hex[Int(byte >> 4)]
                out[position + 1] = hex[Int(byte & 0x0F)]
                position += 2
            }
            return position
        }
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64: fast, not for secrets.
struct Xoshiro256StarStar: RandomNumberGenerator {
    private var s0: UInt64
    private var s1: UInt64
    private var s2: UInt64
    private var s3: UInt64

    init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitMix()
        s1 = splitMix()
        s2 = splitMix()
        s3 = splitMix()
    }

    mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }
}
