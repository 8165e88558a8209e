import Logging
import Models

extension TopicConfig {
    /// Decodes a topic config as a store holds it; nil, with a warning naming the topic and the
    /// reason, when it does not decode (written by a newer broker, or edited by hand), so that one
    /// bad row never hides the others or stops the broker.
    static func decodeStored(_ value: () throws -> JSONValue, topic: String, logger: Logger) -> TopicConfig? {
        do {
            return try TopicConfig.decode(try value())
        } catch {
            let reason = (error as? RequestError)?.message ?? "\(error)"
            logger.warning("skipping a stored topic config that does not decode", metadata: ["topic": "\(topic)", "reason": "\(reason)"])
            return nil
        }
    }
}
