import Foundation
import Models
import Synchronization

/// Leases and membership on MongoDB. Expiry is judged by the database's clock: the broker
/// learns the offset of the server's `localTime` (from `hello`) and writes and compares dates
/// in server time.
extension MongoStore: Coordination {
    /// Server time in epoch milliseconds.
    func serverNow() async throws -> Int64 {
        let local = Int64(Date().timeIntervalSince1970 * 1000)
        if let known = clockOffset.withLock({ $0 }), local - known.measuredAt < 60_000 { return local + known.offset }
        let (offset, _) = try await run { client -> (Int64, Int64) in
            let before = Int64(Date().timeIntervalSince1970 * 1000)
            let reply = try client.command(Array(#"{"hello":1}"#.utf8))
            let after = Int64(Date().timeIntervalSince1970 * 1000)
            guard let server = MongoJSON.date(reply["localTime"]) else { return (0, after) }
            return (server - (before + after) / 2, after)
        }
        clockOffset.withLock { $0 = (offset, local) }
        return local + offset
    }

    public func heartbeat(topic: String, group: String, replica: String) async throws {
        let now = try await serverNow()
        let command = Self.update(
            "members", query: .object([("_id", .string("\(topic):\(group):\(replica)"))]),
            update: .object([
                (
                    "$set",
                    .object([
                        ("topic", .string(topic)), ("group", .string(group)), ("replica", .string(replica)),
                        ("heartbeatAt", MongoJSON.dateValue(now)),
                    ])
                )
            ]), upsert: true)
        _ = try await run { client in try client.command(command) }
    }

    public func leave(topic: String, group: String, replica: String) async throws {
        let command = Self.delete("members", query: .object([("_id", .string("\(topic):\(group):\(replica)"))]), limit: 1)
        _ = try await run { client in try client.command(command) }
    }

    public func liveReplicas(topic: String, group: String, ttlMs: Int64) async throws -> [String] {
        let now = try await serverNow()
        let command = Self.find(
            "members",
            filter: .object([
                ("topic", .string(topic)), ("group", .string(group)),
                ("heartbeatAt", .object([("$gt", MongoJSON.dateValue(now - ttlMs))])),
            ]))
        return try await run { client in
            Self.firstBatch(try client.command(command)).compactMap { MongoJSON.string($0["replica"]) }.sorted()
        }
    }

    public func takeLease(_ id: String, owner: String, ttlMs: Int64) async throws -> Int64? {
        let now = try await serverNow()
        let command = JSONValue.object([
            ("findAndModify", .string("leases")),
            (
                "query",
                .object([
                    ("_id", .string(id)),
                    (
                        "$or",
                        .array([
                            .object([("owner", .null)]), .object([("owner", .string(owner))]),
                            .object([("expiresAt", .object([("$lt", MongoJSON.dateValue(now))]))]),
                        ])
                    ),
                ])
            ),
            (
                "update",
                .object([
                    ("$set", .object([("owner", .string(owner)), ("expiresAt", MongoJSON.dateValue(now + ttlMs))])),
                    ("$inc", .object([("epoch", MongoJSON.long(1))])),
                ])
            ),
            ("upsert", .bool(true)), ("new", .bool(true)),
            ("writeConcern", .object([("w", .string("majority"))])),
        ]).jsonBytes
        do {
            let reply = try await pool.run { client in try client.command(command) }
            return MongoJSON.integer(reply["value"]?["epoch"])
        } catch let error as MongoClientPool.CommandError where error.isDuplicateKey {
            return nil
        } catch let error as MongoClientPool.CommandError {
            throw BrokerError(.unavailable, "MongoDB: \(error.message)", underlying: error)
        }
    }

    public func renewLease(_ id: String, owner: String, epoch: Int64, ttlMs: Int64) async throws -> Bool {
        let now = try await serverNow()
        let command = Self.update(
            "leases", query: .object([("_id", .string(id)), ("owner", .string(owner)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([("$set", .object([("expiresAt", MongoJSON.dateValue(now + ttlMs))]))]))
        let reply = try await run { client in try client.command(command) }
        return (MongoJSON.integer(reply["n"]) ?? 0) == 1
    }

    public func releaseLease(_ id: String, owner: String, epoch: Int64) async throws {
        let command = Self.update(
            "leases", query: .object([("_id", .string(id)), ("owner", .string(owner)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([("$set", .object([("owner", .null), ("expiresAt", MongoJSON.dateValue(0))]))]))
        _ = try await run { client in try client.command(command) }
    }

    public func fence(topic: String, partition: Int, group: String, epoch: Int64) async throws {
        // Only ever raises the epoch, so that a replica with an older lease can never lower it.
        let id = "\(topic):\(partition):\(group)"
        let command = Self.update(
            "group_offsets", query: .object([("_id", .string(id)), ("epoch", .object([("$lt", MongoJSON.long(epoch))]))]),
            update: .object([("$set", .object([("epoch", MongoJSON.long(epoch))]))]))
        _ = try await run { client in try client.command(command) }
    }
}

extension MongoJSON {
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
