import CMongoc
import Models

/// The log: appends (through the appender), reads by offset and time, retention and
/// high-water marks.
extension MongoStore {
    public func append(_ requests: [AppendRequest], completion: @escaping @Sendable (Result<[AppendResult], any Error>) -> Void) {
        guard !closed.load(ordering: .relaxed) else { return completion(.failure(BrokerError(.unavailable, "the store is closed"))) }
        appender.submit(requests, completion: completion)
    }

    public func read(topic: String, partition: Int, from: Int64, limit: Int) async throws -> [Event] {
        try await run { client in
            let reply = try client.command(
                MongoCommand.find(
                    "events",
                    filter: .object([
                        ("topic", .string(topic)), ("partition", MongoJSON.int(partition)),
                        ("offset", .object([("$gte", MongoJSON.long(from))])),
                    ]),
                    sort: .object([("offset", MongoJSON.int(1))]), limit: limit))
            return MongoDocument.firstBatch(reply).compactMap(MongoDocument.event(from:))
        }
    }

    private func firstOffset(topic: String, partition: Int, extra: [(String, JSONValue)]) async throws -> Int64? {
        try await run { client in
            let reply = try client.command(
                MongoCommand.find(
                    "events", filter: .object([("topic", .string(topic)), ("partition", MongoJSON.int(partition))] + extra),
                    sort: .object([("offset", MongoJSON.int(1))]), limit: 1, projection: .object([("offset", MongoJSON.int(1))])))
            return MongoDocument.firstBatch(reply).first.flatMap { MongoJSON.integer($0["offset"]) }
        }
    }

    public func firstOffset(topic: String, partition: Int, atOrAfter timestamp: Int64) async throws -> Int64? {
        try await firstOffset(topic: topic, partition: partition, extra: [("ts", .object([("$gte", MongoJSON.long(timestamp))]))])
    }

    public func lowestOffset(topic: String, partition: Int) async throws -> Int64? {
        try await firstOffset(topic: topic, partition: partition, extra: [])
    }

    /// libbson reads payloads as Extended JSON: an object like `{"$date": "x"}` cannot become
    /// BSON. Refusing it here keeps it from failing a whole batch after offsets were reserved.
    public func validatePayload(_ payload: RawJSON) throws(RequestError) {
        var wrapped = Array(#"{"v":"#.utf8)
        wrapped.append(contentsOf: payload.bytes)
        wrapped.append(UInt8(ascii: "}"))
        var error = bson_error_t()
        guard let document = wrapped.withUnsafeBufferPointer({ bson_new_from_json($0.baseAddress, $0.count, &error) }) else {
            throw .badRequest("payload cannot be stored in MongoDB: \(MongoClientPool.message(error))")
        }
        bson_destroy(document)
    }

    public func deleteEvents(topic: String, olderThan cutoff: Int64) async throws -> Int {
        let command = MongoCommand.delete("events", query: .object([("topic", .string(topic)), ("ts", .object([("$lt", MongoJSON.long(cutoff))]))]))
        let reply = try await run { client in try client.command(command) }
        return Int(MongoJSON.integer(reply["n"]) ?? 0)
    }

    public func highWatermarks(topic: String, partitions: Int) async throws -> [Int64] {
        var partitionOf: [String: Int] = [:]
        for partition in 0..<partitions { partitionOf[StoreKey.counter(topic: topic, partition: partition).id] = partition }
        let command = MongoCommand.find(
            "counters", filter: .object([("_id", .object([("$in", .array(partitionOf.keys.sorted().map(JSONValue.string)))]))]))
        return try await run { [partitionOf] client in
            var marks = [Int64](repeating: 0, count: partitions)
            for document in MongoDocument.firstBatch(try client.command(command)) {
                guard let id = MongoJSON.string(document["_id"]), let partition = partitionOf[id],
                    let next = MongoJSON.integer(document["nextOffset"])
                else { continue }
                marks[partition] = next - 1
            }
            return marks
        }
    }
}
