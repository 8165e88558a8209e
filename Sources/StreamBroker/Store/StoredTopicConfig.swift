import Logging
import Models
import Synchronization

extension TopicConfig {
    /// Decodes a topic config as a store holds it; nil, with a warning naming the topic and the
    /// reason, when it does not decode (written by a newer broker, or edited by hand), so that one
    /// bad row never hides the others or stops the broker.
    ///
    /// - Parameter reported: the rows reported already; the broker re-reads configs every
    ///   `BUS_POLL_MS`, so a row is reported once per reason, then only at debug level.
    static func decodeStored(_ value: () throws -> JSONValue, topic: String, logger: Logger, reported: BadConfigRows) -> TopicConfig? {
        do {
            return try TopicConfig.decode(try value())
        } catch {
            let reason = (error as? RequestError)?.message ?? "\(error)"
            logger.log(
                level: reported.isFirstReport(topic: topic, reason: reason) ? .warning : .debug,
                "skipping a stored topic config that does not decode", metadata: [LogKey.topic: "\(topic)", LogKey.reason: "\(reason)"])
            return nil
        }
    }
}

/// The undecodable topic config rows a store has reported.
final class BadConfigRows: Sendable {
    private let reported = Mutex<Set<[String]>>([])

    func isFirstReport(topic: String, reason: String) -> Bool {
        reported.withLock { $0.insert([topic, reason]).inserted }
    }
}
