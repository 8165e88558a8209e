import Models

/// Builds MongoDB Extended JSON text for commands.
enum MongoJSON {
    static func long(_ value: Int64) -> JSONValue { .object([("$numberLong", .string(String(value)))]) }
    static func int(_ value: Int) -> JSONValue { .number(Double(value), integer: Int64(value)) }
    static func string(_ value: String) -> JSONValue { .string(value) }

    static func integer(_ value: JSONValue?) -> Int64? {
        switch value {
        case .number(let d, let i)?: return i ?? Int64(exactly: d)
        case .object(let members)?:
            if let first = members.first, first.0 == "$numberLong", case .string(let s) = first.1 { return Int64(s) }
            return nil
        default: return nil
        }
    }

    static func string(_ value: JSONValue?) -> String? {
        if case .string(let s)? = value { return s }
        return nil
    }

    static func array(_ value: JSONValue?) -> [JSONValue] {
        if case .array(let items)? = value { return items }
        return []
    }

    /// A BSON date in Extended JSON.
    static func dateValue(_ ms: Int64) -> JSONValue { .object([("$date", long(ms))]) }

    /// Reads `{"$date": "ISO-8601"}` or `{"$date": {"$numberLong": "ms"}}` (relaxed Extended JSON).
    static func date(_ value: JSONValue?) -> Int64? {
        guard let inner = value?["$date"] else { return nil }
        if let ms = integer(inner) { return ms }
        guard case .string(let text) = inner else { return nil }
        return parseISO8601(text)
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → epoch milliseconds.
    static func parseISO8601(_ text: String) -> Int64? {
        let digits = Array(text.utf8)
        func number(_ start: Int, _ count: Int) -> Int64? {
            guard start + count <= digits.count else { return nil }
            var value: Int64 = 0
            for byte in digits[start..<start + count] {
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int64(byte - 0x30)
            }
            return value
        }
        guard let y = number(0, 4), let m = number(5, 2), let d = number(8, 2), let hh = number(11, 2), let mm = number(14, 2),
            let ss = number(17, 2)
        else { return nil }
        var ms: Int64 = 0
        if digits.count > 19, digits[19] == UInt8(ascii: ".") {
            var index = 20
            var scale: Int64 = 100
            while index < digits.count, digits[index] >= 0x30, digits[index] <= 0x39 {
                ms += Int64(digits[index] - 0x30) * scale
                scale /= 10
                index += 1
            }
        }
        // Days from the civil date (Howard Hinnant's algorithm).
        let year = m <= 2 ? y - 1 : y
        let era = (year >= 0 ? year : year - 399) / 400
        let yoe = year - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms
    }
}
