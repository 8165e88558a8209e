/// A token bucket (SPEC §12 `rate`): `rate` tokens a second, at most `rate` saved up.
struct TokenBucket: Sendable, Equatable {
    let rate: Int
    private(set) var tokens: Double
    private(set) var updatedMs: Int64

    init(rate: Int, nowMs: Int64) {
        self.rate = rate
        tokens = Double(rate)
        updatedMs = nowMs
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    mutating func take(nowMs: Int64) -> Int64? {
        if nowMs > updatedMs {
            tokens = min(Double(rate), tokens + Double(nowMs - updatedMs) * Double(rate) / 1000)
            updatedMs = nowMs
        }
        if tokens >= 1 {
            tokens -= 1
            return nil
        }
        return max(1, Int64(((1 - tokens) * 1000 / Double(rate)).rounded(.up)))
    }
}

/// Which refusals get an audit record: at most `perSecond` per principal or address in each
/// second; the next record after a quiet second says how many were left out.
struct RefusalThrottle: Sendable {
    let perSecond: Int
    private var windows: [String: (second: Int64, recorded: Int, suppressed: Int)] = [:]

    init(perSecond: Int) { self.perSecond = perSecond }

    /// nil: leave this one out; else record it, with the count left out before it.
    mutating func admit(_ key: String, nowMs: Int64) -> Int? {
        let second = nowMs / 1000
        var window = windows[key] ?? (second, 0, 0)
        if window.second != second {
            window = (second, 0, window.suppressed)
        }
        defer {
            windows[key] = window
            if windows.count > 10_000 { windows = windows.filter { $0.value.second >= second - 1 } }
        }
        guard window.recorded < perSecond else {
            window.suppressed += 1
            return nil
        }
        window.recorded += 1
        let suppressed = window.suppressed
        window.suppressed = 0
        return suppressed
    }
}
