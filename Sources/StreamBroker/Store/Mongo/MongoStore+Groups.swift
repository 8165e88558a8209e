import Models

/// Group positions (fenced by epoch) and delivery attempts.
extension MongoStore {
    public func positions(topic: String, group: String) async throws -> [GroupPosition] {
        try await run { client in
            let reply = try client.command(
                MongoCommand.find(
                    "group_offsets", filter: .object([("topic", .string(topic)), ("group", .string(group))]),
                    sort: .object([("partition", MongoJSON.int(1))])))
            return MongoDocument.firstBatch(reply).compactMap(MongoDocument.position)
        }
    }

    public func allPositions(topic: String) async throws -> [GroupPosition] {
        try await run { client in
            let reply = try client.command(
                MongoCommand.find(
                    "group_offsets", filter: .object([("topic", .string(topic))]),
                    sort: .object([("group", MongoJSON.int(1)), ("partition", MongoJSON.int(1))])))
            return MongoDocument.firstBatch(reply).compactMap(MongoDocument.position)
        }
    }

    public func commit(topic: String, partition: Int, group: String, lastCommitted: Int64, epoch: Int64) async throws {
        let now = clock()
        let id = StoreKey.groupPartition(topic: topic, partition: partition, group: group)
        let command = MongoCommand.update(
            "group_offsets", query: .object([("_id", .string(id.id)), ("epoch", MongoJSON.long(epoch))]),
            update: .object([
                ("$set", .object([("lastCommitted", MongoJSON.long(lastCommitted)), ("updatedTs", MongoJSON.long(now))])),
                (
                    "$setOnInsert",
                    .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                        ("epoch", MongoJSON.long(epoch)),
                    ])
                ),
            ]), upsert: true)
        do {
            _ = try await run { client in try client.command(command) }
        } catch let error as BrokerError where error.isDuplicateKey {
            // The upsert met the document under another epoch.
            throw BrokerError(.fenced, "commit for \(id) refused: epoch \(epoch) is no longer current")
        }
    }

    public func attempts(topic: String, partition: Int, group: String, above: Int64) async throws -> [Int64: Int] {
        try await run { client in
            let reply = try client.command(
                MongoCommand.find(
                    "attempts",
                    filter: .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                        ("offset", .object([("$gt", MongoJSON.long(above))])),
                    ])))
            var attempts: [Int64: Int] = [:]
            for document in MongoDocument.firstBatch(reply) {
                if let offset = MongoJSON.integer(document["offset"]), let count = MongoJSON.integer(document["attempts"]) {
                    attempts[offset] = Int(count)
                }
            }
            return attempts
        }
    }

    public func setAttempts(topic: String, partition: Int, group: String, offset: Int64, attempts: Int, reason: String?) async throws {
        let command = MongoCommand.update(
            "attempts", query: .object([("_id", .string(StoreKey.attempt(topic: topic, partition: partition, group: group, offset: offset).id))]),
            update: .object([
                (
                    "$set",
                    .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                        ("offset", MongoJSON.long(offset)), ("attempts", MongoJSON.int(attempts)),
                        ("lastReason", reason.map(JSONValue.string) ?? .null),
                    ])
                )
            ]), upsert: true)
        _ = try await run { client in try client.command(command) }
    }

    public func clearAttempts(topic: String, partition: Int, group: String, upTo: Int64) async throws {
        let command = MongoCommand.delete(
            "attempts",
            query: .object([
                ("topic", .string(topic)), ("partition", MongoJSON.int(partition)), ("group", .string(group)),
                ("offset", .object([("$lte", MongoJSON.long(upTo))])),
            ]))
        _ = try await run { client in try client.command(command) }
    }
}
