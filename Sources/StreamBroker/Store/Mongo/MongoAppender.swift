import Foundation
import Logging
import Models

/// Appends to the `events` collection with group commit: a thread takes every request queued
/// while the previous batch ran, reserves offsets with one `$inc` per (topic, partition), and
/// stores the batch with one `insert`.
final class MongoAppender: @unchecked Sendable {
    typealias Completion = @Sendable (Result<[AppendResult], any Error>) -> Void

    private struct Job {
        let requests: [AppendRequest]
        let completion: Completion
    }

    private let pool: MongoClientPool
    private let logger: Logger
    private let clock: @Sendable () -> Int64
    /// - Important: guarded by `condition`.
    private var jobs: [Job] = []
    private var stopping = false
    /// Opens when the appender thread has ended.
    private let finished = Latch()
    private let condition = NSCondition()
    /// Counters known to exist. - Important: touched only on the appender thread.
    private var counters: Set<String> = []

    init(pool: MongoClientPool, logger: Logger, clock: @escaping @Sendable () -> Int64) {
        self.pool = pool
        self.logger = logger
        self.clock = clock
    }

    func start() {
        let thread = Thread { [self] in loop() }
        thread.name = "mongo-appender"
        thread.start()
    }

    func submit(_ requests: [AppendRequest], completion: @escaping Completion) {
        condition.lock()
        guard !stopping else {
            condition.unlock()
            return completion(.failure(BrokerError(.unavailable, "the store is closed")))
        }
        jobs.append(Job(requests: requests, completion: completion))
        condition.signal()
        condition.unlock()
    }

    func stop() async {
        requestStop()
        await finished.wait()
    }

    private func requestStop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            let batch = jobs
            jobs.removeAll()
            let done = batch.isEmpty && stopping
            condition.unlock()
            if done {
                finished.open()
                return
            }
            process(batch)
        }
    }

    private func process(_ batch: [Job]) {
        let requests = batch.flatMap(\.requests)
        let result: Result<[AppendResult], any Error>
        do {
            result = .success(try pool.withClient { client in try append(requests, client) })
        } catch let error as MongoClientPool.CommandError {
            logger.warning("append failed", metadata: ["error": "\(error)"])
            result = .failure(BrokerError(.unavailable, "MongoDB: \(error.message)", underlying: error))
        } catch {
            result = .failure(error)
        }
        var start = 0
        for job in batch {
            let count = job.requests.count
            job.completion(result.map { Array($0[start..<start + count]) })
            start += count
        }
    }

    private func append(_ requests: [AppendRequest], _ client: MongoClientPool.Client) throws -> [AppendResult] {
        var results = [AppendResult?](repeating: nil, count: requests.count)
        // 1. Publishes that repeat a stored (topic, id) store nothing.
        var byTopic: [String: [String]] = [:]
        for request in requests where request.idFromClient { byTopic[request.topic, default: []].append(request.id) }
        var existing: [String: Event] = [:]
        for (topic, ids) in byTopic {
            for event in try findByIDs(topic: topic, ids: ids, client) { existing["\(topic)\u{0}\(event.id)"] = event }
        }
        var firstInBatch: [String: Int] = [:]
        var fresh: [Int] = []
        for (index, request) in requests.enumerated() {
            let key = "\(request.topic)\u{0}\(request.id)"
            if let event = existing[key] {
                results[index] = AppendResult(event: event, duplicate: true)
            } else if request.idFromClient, firstInBatch[key] != nil {
                continue  // resolved after the insert
            } else {
                firstInBatch[key] = index
                fresh.append(index)
            }
        }
        // 2. Reserve offsets: one $inc per (topic, partition).
        var counts: [String: Int64] = [:]
        var order: [String] = []
        for index in fresh {
            let id = "\(requests[index].topic):\(requests[index].partition)"
            if counts[id] == nil { order.append(id) }
            counts[id, default: 0] += 1
        }
        var next: [String: Int64] = [:]
        for id in order {
            next[id] = try reserve(counterID: id, count: counts[id]!, client)
        }
        // 3. Insert the batch.
        let ts = clock()
        var events: [Int: Event] = [:]
        var documents: [UInt8] = []
        for (position, index) in fresh.enumerated() {
            let request = requests[index]
            let id = "\(request.topic):\(request.partition)"
            let offset = next[id]!
            next[id] = offset + 1
            let event = Event(
                topic: request.topic, partition: request.partition, offset: offset, id: request.id, ts: ts,
                key: request.key, headers: request.headers, payload: request.payload)
            events[index] = event
            if position > 0 { documents.append(UInt8(ascii: ",")) }
            documents.append(contentsOf: Self.document(event))
        }
        if !fresh.isEmpty {
            var command = Array(#"{"insert":"events","documents":["#.utf8)
            command.append(contentsOf: documents)
            command.append(contentsOf: #"],"ordered":false,"writeConcern":{"w":"majority"}}"#.utf8)
            let reply = try client.command(command)
            var failed: Set<Int> = []
            for writeError in MongoJSON.array(reply["writeErrors"]) {
                guard let position = MongoJSON.integer(writeError["index"]) else { continue }
                let code = MongoJSON.integer(writeError["code"]) ?? 0
                let index = fresh[Int(position)]
                guard code == 11000, requests[index].idFromClient else {
                    throw MongoClientPool.CommandError(
                        domain: 0, code: UInt32(truncatingIfNeeded: code), message: MongoJSON.string(writeError["errmsg"]) ?? "insert failed")
                }
                failed.insert(index)
            }
            for index in fresh where !failed.contains(index) { results[index] = AppendResult(event: events[index]!, duplicate: false) }
            // Another writer stored the same id first: answer with its event. The offset reserved
            // here stays a hole, which dispatchers skip after BUS_GAP_TIMEOUT_MS.
            for index in failed {
                let request = requests[index]
                guard let event = try findByIDs(topic: request.topic, ids: [request.id], client).first else {
                    throw BrokerError(.unavailable, "duplicate id \(request.id) but no stored event")
                }
                results[index] = AppendResult(event: event, duplicate: true)
            }
        }
        // Repeats inside this batch answer with the first one.
        for (index, request) in requests.enumerated() where results[index] == nil {
            let first = firstInBatch["\(request.topic)\u{0}\(request.id)"]!
            guard let stored = results[first] else { throw BrokerError(.internal, "unresolved duplicate in batch") }
            results[index] = AppendResult(event: stored.event, duplicate: true)
        }
        return results.map { $0! }
    }

    /// Reserves `count` offsets; returns the first.
    private func reserve(counterID: String, count: Int64, _ client: MongoClientPool.Client) throws -> Int64 {
        if !counters.contains(counterID) {
            _ = try client.command(
                MongoStore.update(
                    "counters", query: .object([("_id", .string(counterID))]),
                    update: .object([("$setOnInsert", .object([("nextOffset", MongoJSON.long(1))]))]), upsert: true))
            counters.insert(counterID)
        }
        let reply = try client.command(
            JSONValue.object([
                ("findAndModify", .string("counters")),
                ("query", .object([("_id", .string(counterID))])),
                ("update", .object([("$inc", .object([("nextOffset", MongoJSON.long(count))]))])),
                ("new", .bool(true)),
                ("writeConcern", .object([("w", .string("majority"))])),
            ]).jsonBytes)
        guard let next = MongoJSON.integer(reply["value"]?["nextOffset"]) else {
            counters.remove(counterID)
            throw BrokerError(.unavailable, "offset counter \(counterID) missing")
        }
        return next - count
    }

    private func findByIDs(topic: String, ids: [String], _ client: MongoClientPool.Client) throws -> [Event] {
        let reply = try client.command(
            MongoStore.find("events", filter: .object([("topic", .string(topic)), ("id", .object([("$in", .array(ids.map(JSONValue.string)))]))])))
        return MongoStore.firstBatch(reply).compactMap(MongoStore.event(from:))
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
}
