import Foundation
import Models

/// Writes outbox rows for a Swift service: `{_id, topic, key?, headers?, payload, createdTs}`
/// into `db.collection`, which a broker configured with `BUS_OUTBOX` drains into the log. The
/// row's `_id` (a UUIDv7 unless given) becomes the event id.
///
/// A service that needs the row in the same transaction as its business writes inserts the
/// same document with its own driver session; this writer is for the simple case.
public struct MongoOutboxWriter: Sendable {
    private let store: MongoStore
    public let database: String
    public let collection: String

    /// - Parameter outbox: `db.collection`, as in `BUS_OUTBOX`.
    public init(store: MongoStore, outbox: String) {
        self.store = store
        let parts = outbox.split(separator: ".", maxSplits: 1).map(String.init)
        database = parts[0]
        collection = parts.count > 1 ? parts[1] : "outbox"
    }

    /// Inserts one row; returns its `_id` (the future event id).
    @discardableResult
    public func enqueue(
        topic: String, key: String? = nil, headers: [(String, String)]? = nil, json: String, id: String? = nil
    ) async throws
        -> String
    {
        let rowID = id ?? UUIDv7.make()
        // The rules the drain applies, checked here so that a bad row is refused, not queued.
        let request = PublishRequest(topic: topic, key: key, headers: headers.map(Headers.init), payload: try RawJSON.payload(json), id: rowID)
        try request.validate()
        var row = JSONObjectWriter(capacity: request.payload.bytes.count + 160)
        row.string("_id", rowID)
        row.string("topic", topic)
        row.optionalString("key", key)
        if let headers = request.headers { row.raw("headers", headers.jsonBytes) }
        row.raw("payload", request.payload.bytes)
        row.raw("createdTs", MongoJSON.long(Int64(Date().timeIntervalSince1970 * 1000)).jsonBytes)
        let (database, command) = (self.database, MongoCommand.insert(collection, documents: [row.finish()]))
        let reply = try await store.run { client in try client.command(command, database: database, writeErrors: .return) }
        if let error = MongoJSON.array(reply["writeErrors"]).first {
            throw BrokerError(.unavailable, "outbox insert failed: \(MongoJSON.string(error["errmsg"]) ?? "write error")")
        }
        return rowID
    }
}
