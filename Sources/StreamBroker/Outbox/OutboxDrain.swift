import Foundation
import Logging
import Models
import ServiceLifecycle

/// Drains one outbox collection (SPEC §1) into the log: rows `{topic, key?, headers?, payload,
/// createdTs}` that services insert in their own transactions become events, in `createdTs, _id`
/// order, with the row's `_id` as the event id, and are then deleted. Runs on one replica at a
/// time (`job:outbox:DB.COLLECTION`), woken by a change stream on the collection and swept by
/// a poll every `BUS_POLL_MS`.
///
/// Idempotent: a crash between appending and deleting re-drains the rows, and the event ids are
/// already stored (duplicates store nothing). A row with a bad shape is moved to
/// `outbox_rejects` in the same database with the reason, never dropped and never blocking the
/// rows behind it.
public final class OutboxDrain: Service {
    public let database: String
    public let collection: String
    private let broker: Broker
    private let store: MongoStore
    private let logger: Logger
    static let batchSize = 500

    /// - Parameter outbox: `db.collection`.
    public init(outbox: String, broker: Broker, store: MongoStore, logger: Logger = Logger(label: "broker.outbox")) {
        let parts = outbox.split(separator: ".", maxSplits: 1).map(String.init)
        database = parts[0]
        collection = parts.count > 1 ? parts[1] : "outbox"
        self.broker = broker
        self.store = store
        var logger = logger
        logger[metadataKey: LogKey.outbox] = "\(outbox)"
        self.logger = logger
    }

    public func run() async throws {
        // Wait for the broker to have opened the store (or for the end: a broker whose store
        // failed to open cancels its services, and a cancelled sleep returns at once).
        while !(await store.isReady()) {
            if Task.isShuttingDownGracefully || Task.isCancelled { return }
            try? await Task.sleep(for: .milliseconds(200))
        }
        let lease = JobLease(
            name: "outbox:\(database).\(collection)", coordination: store, owner: broker.settings.replicaID,
            ttlMs: broker.settings.leaseTTLMs, logger: logger)
        await cancelWhenGracefulShutdown {
            await lease.run { [self] in await drainWhileHeld() }
        }
    }

    /// Drains until cancelled (the lease is lost or the broker stops): at once, on every insert
    /// into the outbox (a change stream on a thread of its own, like the topics' tails, so no
    /// command thread waits in its `getMore`), and every `BUS_POLL_MS` in case the stream stalls.
    private func drainWhileHeld() async {
        let (doorbell, ring) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let tail = store.watchInserts(database: database, collection: collection) { ring.yield() }
        defer { tail.stop() }
        let pollMs = broker.settings.pollMs
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(pollMs))
                    ring.yield()
                }
            }
            ring.yield()
            for await _ in doorbell {
                do {
                    // A full batch may have more behind it: go on without waiting.
                    while try await drainOnce() == Self.batchSize, !Task.isCancelled {}
                } catch {
                    logger.warning("outbox drain failed; retrying", metadata: [LogKey.error: "\(error)"])
                    try? await Task.sleep(for: .milliseconds(500))
                    ring.yield()
                }
            }
            group.cancelAll()
        }
    }

    /// Moves one batch of rows into the log; returns how many rows it handled.
    func drainOnce() async throws -> Int {
        let (database, collection) = (self.database, self.collection)
        let rows = try await store.run { client in
            MongoDocument.firstBatch(
                try client.command(
                    MongoCommand.find(
                        collection, filter: .object([]), sort: .object([("createdTs", MongoJSON.int(1)), ("_id", MongoJSON.int(1))]),
                        limit: Self.batchSize), database: database))
        }
        guard !rows.isEmpty else { return 0 }
        var valid: [(id: JSONValue, request: PublishRequest)] = []
        var rejects: [(row: JSONValue, reason: String)] = []
        for row in rows {
            do throws(RequestError) {
                let request = try Self.request(from: row)
                try store.validatePayload(request.payload)
                valid.append((row["_id"] ?? .null, request))
            } catch {
                rejects.append((row, error.message))
            }
        }
        if !valid.isEmpty {
            let results = try await broker.publish(batch: valid.map(\.request))
            let fresh = results.filter { !$0.duplicate }.count
            logger.debug("outbox rows drained", metadata: [LogKey.rows: "\(valid.count)", LogKey.new: "\(fresh)"])
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let rejectDocs = rejects
        try await store.run { client in
            for (row, reason) in rejectDocs {
                let id = row["_id"] ?? .null
                let document = JSONValue.object([
                    ("_id", id), ("row", row), ("reason", .string(reason)), ("outbox", .string(collection)), ("rejectedTs", MongoJSON.long(now)),
                ])
                _ = try client.command(
                    MongoCommand.update("outbox_rejects", query: .object([("_id", id)]), update: document, upsert: true), database: database)
            }
            let ids = rows.map { $0["_id"] ?? .null }
            _ = try client.command(MongoCommand.delete(collection, query: .object([("_id", .object([("$in", .array(ids))]))])), database: database)
        }
        if !rejects.isEmpty {
            logger.warning("outbox rows rejected", metadata: [LogKey.count: "\(rejects.count)", LogKey.first: "\(rejects[0].reason)"])
            broker.audit(
                kind: "outbox.rejected", topic: "\(database).\(collection)",
                fields: [("count", .int(rejects.count)), ("reasons", .array(rejects.prefix(10).map { .string($0.reason) }))])
        }
        return rows.count
    }

    /// The event a row describes; the row's `_id` becomes the event id.
    static func request(from row: JSONValue) throws(RequestError) -> PublishRequest {
        guard case .object(let members) = row else { throw .badRequest("an outbox row must be a document") }
        let id: String
        switch row["_id"] {
        case .object(let inner)? where inner.count == 1 && inner[0].0 == "$oid":
            guard case .string(let hex) = inner[0].1 else { throw .badRequest("row _id is not an ObjectId") }
            id = hex
        case .string(let text)?: id = text
        case .some(let other): id = String(decoding: other.jsonBytes, as: UTF8.self)
        case nil: throw .badRequest("row has no _id")
        }
        guard case .string(let topic)? = row["topic"] else { throw .badRequest("row needs a topic (a string)") }
        guard let payload = members.first(where: { $0.0 == "payload" })?.1 else { throw .badRequest("row needs a payload") }
        var key: String?
        switch row["key"] {
        case nil, .null?: key = nil
        case .string(let text)?: key = text
        default: throw .badRequest("row key must be a string")
        }
        var headers: Headers?
        if let value = row["headers"], value != .null { headers = try Headers.decode(value) }
        let request = PublishRequest(topic: topic, key: key, headers: headers, payload: RawJSON(trusted: payload.jsonBytes), id: id)
        try request.validate()
        return request
    }
}
