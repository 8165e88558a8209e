import Foundation
import Logging
import Models
import Synchronization

/// One change stream on `events` — for one topic, or for every topic (the shared stream) — on
/// a thread of its own holding one pooled client while it waits in `getMore`. New events go to
/// `deliver`; an empty batch means "rescan by offset" (the stream was opened from now and may
/// have missed something).
final class ChangeStreamTail: Sendable {
    /// nil: inserts of every topic.
    let topic: String?
    private let pool: MongoClientPool
    private let awaitMs: Int
    private let logger: Logger
    private let deliver: @Sendable ([Event]) -> Void
    private let finish: @Sendable () -> Void
    private let stopped = Atomic<Bool>(false)
    private let exited = Latch()

    init(
        topic: String?, pool: MongoClientPool, awaitMs: Int, logger: Logger, deliver: @escaping @Sendable ([Event]) -> Void,
        finish: @escaping @Sendable () -> Void
    ) {
        self.topic = topic
        self.pool = pool
        self.awaitMs = awaitMs
        self.logger = logger
        self.deliver = deliver
        self.finish = finish
    }

    func start(onExit: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            loop()
            onExit()
            finish()
            exited.open()
        }
        thread.name = "change-stream"
        thread.start()
    }

    func stop() { stopped.store(true, ordering: .relaxed) }

    func join() async { await exited.wait() }

    /// Error codes after which a change stream resumes from its token (the drivers' list).
    static let resumableCodes: Set<UInt32> = [6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436]

    private func loop() {
        var token: JSONValue?
        var failures = 0
        while !stopped.load(ordering: .relaxed) {
            var cursor: Int64?
            do {
                try pool.withClient { client in
                    defer {
                        if let cursor {
                            _ = try? client.command(
                                JSONValue.object([("killCursors", .string("events")), ("cursors", .array([MongoJSON.long(cursor)]))]).jsonBytes)
                        }
                    }
                    let opened = try open(client, resumeAfter: token)
                    cursor = opened.cursor
                    token = opened.token ?? token
                    failures = 0
                    if !opened.resumed { deliver([]) }
                    if !opened.events.isEmpty { deliver(opened.events) }
                    while !stopped.load(ordering: .relaxed), let id = cursor, id != 0 {
                        let reply = try client.command(
                            JSONValue.object([
                                ("getMore", MongoJSON.long(id)), ("collection", .string("events")), ("maxTimeMS", MongoJSON.int(awaitMs)),
                            ]).jsonBytes)
                        let batch = reply["cursor"]
                        cursor = MongoJSON.integer(batch?["id"])
                        let events = MongoJSON.array(batch?["nextBatch"]).compactMap { $0["fullDocument"].flatMap(MongoStore.event(from:)) }
                        if let next = batch?["postBatchResumeToken"] { token = next }
                        if !events.isEmpty { deliver(events) }
                    }
                }
            } catch let error as MongoClientPool.CommandError {
                failures += 1
                let resumable = error.isConnectivity || Self.resumableCodes.contains(error.code) || error.labels.contains("ResumableChangeStreamError")
                if !resumable {
                    // History lost (286) or anything else unrecoverable: start again from now and rescan.
                    logger.warning("change stream lost; reopening from now", metadata: ["topic": "\(topic ?? "*")", "error": "\(error)"])
                    token = nil
                } else if failures == 1 || failures % 20 == 0 {
                    logger.info("change stream interrupted; resuming", metadata: ["topic": "\(topic ?? "*")", "error": "\(error)"])
                }
                Thread.sleep(forTimeInterval: min(1.0, 0.05 * Double(failures)))
            } catch {
                failures += 1
                token = nil
                logger.warning("change stream failed; reopening", metadata: ["topic": "\(topic ?? "*")", "error": "\(error)"])
                Thread.sleep(forTimeInterval: min(1.0, 0.05 * Double(failures)))
            }
        }
    }

    private func open(_ client: MongoClientPool.Client, resumeAfter token: JSONValue?) throws -> (cursor: Int64?, token: JSONValue?, events: [Event], resumed: Bool) {
        var stage: [(String, JSONValue)] = []
        if let token { stage.append(("resumeAfter", token)) }
        let reply = try client.command(
            JSONValue.object([
                ("aggregate", .string("events")),
                (
                    "pipeline",
                    .array([
                        .object([("$changeStream", .object(stage))]),
                        .object([("$match", .object([("operationType", .string("insert"))] + (topic.map { [("fullDocument.topic", .string($0))] } ?? [])))]),
                    ])
                ),
                ("cursor", .object([])),
            ]).jsonBytes)
        let cursor = reply["cursor"]
        let events = MongoJSON.array(cursor?["firstBatch"]).compactMap { $0["fullDocument"].flatMap(MongoStore.event(from:)) }
        return (MongoJSON.integer(cursor?["id"]), cursor?["postBatchResumeToken"], events, token != nil)
    }
}
