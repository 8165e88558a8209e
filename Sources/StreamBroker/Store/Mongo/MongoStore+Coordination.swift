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
        let command = MongoCommand.update(
            "members", query: .object([("_id", .string(StoreKey.member(topic: topic, group: group, replica: replica).id))]),
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
        let command = MongoCommand.delete(
            "members", query: .object([("_id", .string(StoreKey.member(topic: topic, group: group, replica: replica).id))]), limit: 1)
        _ = try await run { client in try client.command(command) }
    }

    public func liveReplicas(topic: String, group: String, ttlMs: Int64) async throws -> [String] {
        let now = try await serverNow()
        let command = MongoCommand.find(
            "members",
            filter: .object([
                ("topic", .string(topic)), ("group", .string(group)),
                ("heartbeatAt", .object([("$gt", MongoJSON.dateValue(now - ttlMs))])),
            ]))
        return try await run { client in
            MongoDocument.firstBatch(try client.command(command)).compactMap { MongoJSON.string($0["replica"]) }.sorted()
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
            let reply = try await run { client in try client.command(command) }
            return MongoJSON.integer(reply["value"]?["epoch"])
        } catch let error as BrokerError where error.isDuplicateKey {
            return nil
        }
    }

    public func renewLease(_ id: String, owner: String, epoch: Int64, ttlMs: Int64) async throws -> Bool {
        let now = try await serverNow()
        let command = MongoCommand.update(
            "leases", query: .object([("_id", .string(id)), ("owner", .string(owner)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([("$set", .object([("expiresAt", MongoJSON.dateValue(now + ttlMs))]))]))
        let reply = try await run { client in try client.command(command) }
        return (MongoJSON.integer(reply["n"]) ?? 0) == 1
    }

    public func releaseLease(_ id: String, owner: String, epoch: Int64) async throws {
        let command = MongoCommand.update(
            "leases", query: .object([("_id", .string(id)), ("owner", .string(owner)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([("$set", .object([("owner", .null), ("expiresAt", MongoJSON.dateValue(0))]))]))
        _ = try await run { client in try client.command(command) }
    }

    public func fence(topic: String, partition: Int, group: String, epoch: Int64) async throws {
        // Only ever raises the epoch, so that a replica with an older lease can never lower it.
        let id = StoreKey.groupPartition(topic: topic, partition: partition, group: group).id
        let command = MongoCommand.update(
            "group_offsets", query: .object([("_id", .string(id)), ("epoch", .object([("$lt", MongoJSON.long(epoch))]))]),
            update: .object([("$set", .object([("epoch", MongoJSON.long(epoch))]))]))
        _ = try await run { client in try client.command(command) }
    }
}
