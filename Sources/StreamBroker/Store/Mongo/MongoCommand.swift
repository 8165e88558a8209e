import Models

/// The MongoDB commands the store sends, as Extended JSON text for libbson.
enum MongoCommand {
    static func find(
        _ collection: String, filter: JSONValue, sort: JSONValue? = nil, limit: Int? = nil, projection: JSONValue? = nil
    ) -> [UInt8] {
        var members: [(String, JSONValue)] = [("find", .string(collection)), ("filter", filter)]
        if let sort { members.append(("sort", sort)) }
        if let projection { members.append(("projection", projection)) }
        if let limit {
            members.append(("limit", MongoJSON.int(limit)))
            members.append(("batchSize", MongoJSON.int(limit)))
            members.append(("singleBatch", .bool(true)))
        } else {
            members.append(("batchSize", MongoJSON.int(100_000)))
            members.append(("singleBatch", .bool(true)))
        }
        return JSONValue.object(members).jsonBytes
    }

    /// An `update` command with one statement, majority write concern.
    static func update(_ collection: String, query: JSONValue, update: JSONValue, upsert: Bool = false) -> [UInt8] {
        JSONValue.object([
            ("update", .string(collection)),
            ("updates", .array([.object([("q", query), ("u", update), ("upsert", .bool(upsert))])])),
            ("writeConcern", .object([("w", .string("majority"))])),
        ]).jsonBytes
    }

    /// A `delete` command with one statement (`limit` 0: every match).
    static func delete(_ collection: String, query: JSONValue, limit: Int = 0) -> [UInt8] {
        JSONValue.object([
            ("delete", .string(collection)),
            ("deletes", .array([.object([("q", query), ("limit", MongoJSON.int(limit))])])),
        ]).jsonBytes
    }

    /// An unordered `insert` of documents given as Extended JSON, majority write concern.
    static func insert(_ collection: String, documents: [[UInt8]]) -> [UInt8] {
        var command = Array(#"{"insert":"#.utf8)
        JSONWriter.writeString(collection, into: &command)
        command.append(contentsOf: #","documents":["#.utf8)
        for (index, document) in documents.enumerated() {
            if index > 0 { command.append(UInt8(ascii: ",")) }
            command.append(contentsOf: document)
        }
        command.append(contentsOf: #"],"ordered":false,"writeConcern":{"w":"majority"}}"#.utf8)
        return command
    }

    /// Opens a change stream on `collection` with `pipeline` after the `$changeStream` stage.
    static func changeStream(_ collection: String, resumeAfter token: JSONValue?, pipeline: [JSONValue]) -> [UInt8] {
        var stage: [(String, JSONValue)] = []
        if let token { stage.append(("resumeAfter", token)) }
        return JSONValue.object([
            ("aggregate", .string(collection)),
            ("pipeline", .array([.object([("$changeStream", .object(stage))])] + pipeline)),
            ("cursor", .object([])),
        ]).jsonBytes
    }

    /// The next batch of a cursor, waiting up to `maxTimeMS` for one (an awaitData cursor).
    static func getMore(_ cursor: Int64, collection: String, maxTimeMS: Int) -> [UInt8] {
        JSONValue.object([("getMore", MongoJSON.long(cursor)), ("collection", .string(collection)), ("maxTimeMS", MongoJSON.int(maxTimeMS))])
            .jsonBytes
    }

    static func killCursors(_ cursor: Int64, collection: String) -> [UInt8] {
        JSONValue.object([("killCursors", .string(collection)), ("cursors", .array([MongoJSON.long(cursor)]))]).jsonBytes
    }
}

/// The store's documents: events and group positions as the collections hold them (SPEC §3).
enum MongoDocument {
    static func firstBatch(_ reply: JSONValue) -> [JSONValue] {
        MongoJSON.array(reply["cursor"]?["firstBatch"])
    }

    static func event(from document: JSONValue) -> Event? {
        guard let topic = MongoJSON.string(document["topic"]), let partition = MongoJSON.integer(document["partition"]),
            let offset = MongoJSON.integer(document["offset"]), let id = MongoJSON.string(document["id"])
        else { return nil }
        var headers: Headers?
        if let value = document["headers"] { headers = try? Headers.decode(value) }
        return Event(
            topic: topic, partition: Int(partition), offset: offset, id: id, ts: MongoJSON.integer(document["ts"]) ?? 0,
            key: MongoJSON.string(document["key"]), headers: headers,
            payload: RawJSON(trusted: (document["payload"] ?? .null).jsonBytes))
    }

    /// The event as an Extended JSON document; the payload bytes go in as they are.
    static func document(_ event: Event) -> [UInt8] {
        var writer = JSONObjectWriter(capacity: event.payload.bytes.count + 200)
        writer.string("topic", event.topic)
        writer.int("partition", event.partition)
        writer.raw("offset", MongoJSON.long(event.offset).jsonBytes)
        writer.string("id", event.id)
        writer.raw("ts", MongoJSON.long(event.ts).jsonBytes)
        writer.optionalString("key", event.key)
        if let headers = event.headers { writer.raw("headers", headers.jsonBytes) }
        writer.raw("payload", event.payload.bytes)
        return writer.finish()
    }

    static func position(_ document: JSONValue) -> GroupPosition? {
        guard let group = MongoJSON.string(document["group"]), let partition = MongoJSON.integer(document["partition"]),
            let committed = MongoJSON.integer(document["lastCommitted"])
        else { return nil }
        return GroupPosition(group: group, partition: Int(partition), lastCommitted: committed, epoch: MongoJSON.integer(document["epoch"]) ?? 0)
    }
}
