import Logging
import Models

/// Topic configs, one document per topic.
extension MongoStore {
    public func topicConfigs() async throws -> [TopicConfig] {
        let (logger, reported) = (self.logger, badConfigRows)
        return try await run { client in
            let reply = try client.command(MongoCommand.find("topic_configs", filter: .object([]), sort: .object([("topic", MongoJSON.int(1))])))
            return MongoDocument.firstBatch(reply).compactMap { Self.decodeConfig($0, logger: logger, reported: reported) }
        }
    }

    public func putTopicConfig(_ config: TopicConfig) async throws {
        let command = MongoCommand.update("topic_configs", query: .object([("topic", .string(config.topic))]), update: config.jsonValue, upsert: true)
        _ = try await run { client in try client.command(command) }
    }

    public func ensureTopicConfig(_ config: TopicConfig) async throws -> TopicConfig {
        let insert = MongoCommand.update(
            "topic_configs", query: .object([("topic", .string(config.topic))]), update: .object([("$setOnInsert", config.jsonValue)]),
            upsert: true)
        let find = MongoCommand.find("topic_configs", filter: .object([("topic", .string(config.topic))]), limit: 1)
        let (logger, reported) = (self.logger, badConfigRows)
        return try await run { client in
            do {
                _ = try client.command(insert)
            } catch let error as MongoClientPool.CommandError where error.isDuplicateKey {
                // Another replica inserted it at the same moment; read theirs.
            }
            guard let document = MongoDocument.firstBatch(try client.command(find)).first else { return config }
            return Self.decodeConfig(document, logger: logger, reported: reported) ?? config
        }
    }

    /// A stored config document's config (without `_id`), or nil (logged) when it does not decode.
    private static func decodeConfig(_ document: JSONValue, logger: Logger, reported: BadConfigRows) -> TopicConfig? {
        TopicConfig.decodeStored(
            {
                guard case .object(let members) = document else { throw RequestError.badRequest("a topic config must be a document") }
                return .object(members.filter { $0.0 != "_id" })
            }, topic: MongoJSON.string(document["topic"]) ?? "?", logger: logger, reported: reported)
    }
}
