import Logging
import Models

/// Topic configs, one JSON row per topic.
extension SQLiteStore {
    public func topicConfigs() async throws -> [TopicConfig] {
        let (logger, reported) = (self.logger, badConfigRows)
        return try await write { db in
            var configs: [TopicConfig] = []
            try db.query("SELECT topic, config FROM topic_configs ORDER BY topic") { row in
                if let config = Self.decodeConfig(row, logger: logger, reported: reported) { configs.append(config) }
            }
            return configs
        }
    }

    public func putTopicConfig(_ config: TopicConfig) async throws {
        try await write { db in
            try db.run(
                "INSERT INTO topic_configs(topic, config) VALUES (?, ?) ON CONFLICT(topic) DO UPDATE SET config = excluded.config",
                [.text(config.topic), .blob(config.jsonValue.jsonBytes)])
        }
    }

    public func ensureTopicConfig(_ config: TopicConfig) async throws -> TopicConfig {
        let (logger, reported) = (self.logger, badConfigRows)
        return try await write { db in
            try db.run("INSERT OR IGNORE INTO topic_configs(topic, config) VALUES (?, ?)", [.text(config.topic), .blob(config.jsonValue.jsonBytes)])
            var stored = config
            try db.query("SELECT topic, config FROM topic_configs WHERE topic = ?", [.text(config.topic)]) { row in
                if let decoded = Self.decodeConfig(row, logger: logger, reported: reported) { stored = decoded }
            }
            return stored
        }
    }

    /// A `(topic, config)` row's config, or nil (logged) when it does not decode.
    private static func decodeConfig(_ row: SQLiteConnection.Row, logger: Logger, reported: BadConfigRows) -> TopicConfig? {
        TopicConfig.decodeStored(
            { try RawJSON(trusted: row.bytes(1) ?? []).parsed() }, topic: row.text(0) ?? "", logger: logger, reported: reported)
    }
}
