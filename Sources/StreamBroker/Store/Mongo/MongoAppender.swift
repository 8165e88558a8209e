import Foundation
import Logging
import Models

/// Appends to the `events` collection on a ``GroupCommitThread``: each batch is everything
/// queued while the previous one ran; one `$inc` per (topic, partition) reserves its offsets
/// and one `insert` stores it.
final class MongoAppender: @unchecked Sendable {
    typealias Completion = @Sendable (Result<[AppendResult], any Error>) -> Void

    private struct Job {
        let requests: [AppendRequest]
        let completion: Completion
    }

    private let pool: MongoClientPool
    private let logger: Logger
    private let clock: @Sendable () -> Int64
    private let thread = GroupCommitThread<Job>(name: "mongo-appender")
    private let metrics = StoreMetrics()
    /// Counters known to exist. - Important: touched only on the appender thread.
    private var counters: Set<StoreKey> = []

    init(pool: MongoClientPool, logger: Logger, clock: @escaping @Sendable () -> Int64) {
        self.pool = pool
        self.logger = logger
        self.clock = clock
    }

    func start() {
        // The thread keeps the appender alive until `stop` ends it.
        thread.start { [self] batch, queuedAt in process(batch, queuedAt: queuedAt) }
    }

    func submit(_ requests: [AppendRequest], completion: @escaping Completion) {
        if !thread.submit(Job(requests: requests, completion: completion)) {
            completion(.failure(BrokerError(.unavailable, "the store is closed")))
        }
    }

    /// Stores what is queued, then ends the thread.
    func stop() async {
        for job in await thread.stop() { job.completion(.failure(BrokerError(.unavailable, "the store is closed"))) }
    }

    private func process(_ batch: [Job], queuedAt: UInt64) {
        let requests = batch.flatMap(\.requests)
        let result = Result { try pool.withClient { client in try append(requests, client) } }
        switch result {
        case .success:
            // Once per batch: from its oldest job's queueing to the acknowledged insert.
            metrics.appended(queuedAt: queuedAt)
        case .failure(let error as BrokerError):
            if let mongo = error.mongoError { logger.warning("append failed", metadata: [LogKey.error: "\(mongo)"]) }
        case .failure:
            break
        }
        var start = 0
        for job in batch {
            let count = job.requests.count
            job.completion(result.map { Array($0[start..<start + count]) })
            start += count
        }
    }

    private func append(_ requests: [AppendRequest], _ client: MongoClientPool.Client) throws -> [AppendResult] {
        var stored: [Event] = []
        for (topic, ids) in AppendPlan.idsToLookUp(requests) { stored += try findByIDs(topic: topic, ids: ids, client) }
        let plan = AppendPlan(requests, stored: stored)
        var first: [StoreKey: Int64] = [:]
        for (counter, count) in plan.reservations { first[counter] = try reserve(counter, count: count, client) }
        let events = plan.events(firstOffsets: first, ts: clock())
        guard !events.isEmpty else { return try plan.results(inserted: []) }
        let reply = try client.command(MongoCommand.insert("events", documents: events.map(MongoDocument.document)), writeErrors: .return)
        var lostRaces: [Int: Event] = [:]
        for writeError in MongoJSON.array(reply["writeErrors"]) {
            guard let position = MongoJSON.integer(writeError["index"]).map(Int.init) else { continue }
            let code = MongoJSON.integer(writeError["code"]) ?? 0
            let request = plan.request(fresh: position)
            guard code == 11000, request.idFromClient else {
                throw MongoClientPool.CommandError(
                    domain: 0, code: UInt32(truncatingIfNeeded: code), message: MongoJSON.string(writeError["errmsg"]) ?? "insert failed")
            }
            // Another writer stored the same id first: answer with its event.
            guard let event = try findByIDs(topic: request.topic, ids: [request.id], client).first else {
                throw BrokerError(.unavailable, "duplicate id \(request.id) but no stored event")
            }
            lostRaces[position] = event
        }
        return try plan.results(inserted: events, lostRaces: lostRaces)
    }

    /// Reserves `count` offsets; returns the first.
    private func reserve(_ counter: StoreKey, count: Int64, _ client: MongoClientPool.Client) throws -> Int64 {
        if !counters.contains(counter) {
            _ = try client.command(
                MongoCommand.update(
                    "counters", query: .object([("_id", .string(counter.id))]),
                    update: .object([("$setOnInsert", .object([("nextOffset", MongoJSON.long(1))]))]), upsert: true))
            counters.insert(counter)
        }
        let reply = try client.command(
            JSONValue.object([
                ("findAndModify", .string("counters")),
                ("query", .object([("_id", .string(counter.id))])),
                ("update", .object([("$inc", .object([("nextOffset", MongoJSON.long(count))]))])),
                ("new", .bool(true)),
                ("writeConcern", .object([("w", .string("majority"))])),
            ]).jsonBytes)
        guard let next = MongoJSON.integer(reply["value"]?["nextOffset"]) else {
            counters.remove(counter)
            throw BrokerError(.unavailable, "offset counter \(counter) missing")
        }
        return next - count
    }

    private func findByIDs(topic: String, ids: [String], _ client: MongoClientPool.Client) throws -> [Event] {
        let reply = try client.command(
            MongoCommand.find("events", filter: .object([("topic", .string(topic)), ("id", .object([("$in", .array(ids.map(JSONValue.string)))]))])))
        return MongoDocument.firstBatch(reply).compactMap(MongoDocument.event(from:))
    }
}
