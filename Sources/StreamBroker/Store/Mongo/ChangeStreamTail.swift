import Foundation
import Logging
import Metrics
import Models
import Synchronization

/// One change stream on a thread of its own holding one pooled client while it waits in
/// `getMore`: inserts into `events` of one topic or of every topic (the shared stream), or
/// inserts into any collection (an outbox's doorbell). The inserted documents go to `deliver`;
/// an empty batch means "rescan" (the stream was opened from now and may have missed something).
final class ChangeStreamTail: Sendable {
    enum Target: Sendable, Equatable {
        /// Inserts into `events` of one topic.
        case topic(String)
        /// Inserts into `events` of every topic.
        case allTopics
        /// Inserts into a collection of any database.
        case collection(database: String, name: String)
    }

    let target: Target
    private let pool: MongoClientPool
    private let awaitMs: Int
    private let logger: Logger
    private let deliver: @Sendable ([JSONValue]) -> Void
    private let finish: @Sendable () -> Void
    private let stopped = Atomic<Bool>(false)
    private let exited = Latch()
    /// Reopened after an error (``MetricName/changeStreamResumes``).
    private let resumes: Counter

    /// - Parameters:
    ///   - deliver: the inserted documents of each batch, or an empty batch when the stream
    ///     (re)opened from now; called on the tail's thread.
    ///   - finish: called on the tail's thread once it has ended.
    init(
        target: Target, pool: MongoClientPool, awaitMs: Int, logger: Logger, deliver: @escaping @Sendable ([JSONValue]) -> Void,
        finish: @escaping @Sendable () -> Void
    ) {
        self.target = target
        self.pool = pool
        self.awaitMs = awaitMs
        self.logger = logger
        self.deliver = deliver
        self.finish = finish
        resumes = Counter(label: MetricName.changeStreamResumes, dimensions: [("stream", Self.label(of: target))])
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

    /// Asks the thread to end (after its current `getMore`, at most `awaitMs`).
    func stop() { stopped.store(true, ordering: .relaxed) }

    /// Returns once the tail's thread has ended, even when cancelled: the caller destroys the
    /// client pool the thread may still be using in a `getMore`.
    func join() async { await exited.waitIgnoringCancellation() }

    /// Error codes after which a change stream resumes from its token (the drivers' list).
    static let resumableCodes: Set<UInt32> = [6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436]

    private var database: String? {
        if case .collection(let database, _) = target { database } else { nil }
    }

    private var collection: String {
        if case .collection(_, let name) = target { name } else { "events" }
    }

    private var label: String { Self.label(of: target) }

    /// The topic; `*` for the shared stream of further topics; `database.collection` for an
    /// outbox's doorbell.
    private static func label(of target: Target) -> String {
        switch target {
        case .topic(let topic): topic
        case .allTopics: "*"
        case .collection(let database, let name): "\(database).\(name)"
        }
    }

    private func loop() {
        var token: JSONValue?
        var failures = 0
        var openedBefore = false
        let (database, collection) = (self.database, self.collection)
        while !stopped.load(ordering: .relaxed) {
            var cursor: Int64?
            do {
                try pool.withClient { client in
                    defer {
                        if let cursor { _ = try? client.command(MongoCommand.killCursors(cursor, collection: collection), database: database) }
                    }
                    let opened = try open(client, resumeAfter: token)
                    cursor = opened.cursor
                    token = opened.token ?? token
                    if openedBefore && failures > 0 { resumes.increment() }
                    openedBefore = true
                    failures = 0
                    if !opened.resumed { deliver([]) }
                    if !opened.documents.isEmpty { deliver(opened.documents) }
                    while !stopped.load(ordering: .relaxed), let id = cursor, id != 0 {
                        let reply = try client.command(MongoCommand.getMore(id, collection: collection, maxTimeMS: awaitMs), database: database)
                        let batch = reply["cursor"]
                        cursor = MongoJSON.integer(batch?["id"])
                        let documents = MongoJSON.array(batch?["nextBatch"]).compactMap { $0["fullDocument"] }
                        if let next = batch?["postBatchResumeToken"] { token = next }
                        if !documents.isEmpty { deliver(documents) }
                    }
                }
            } catch {
                failures += 1
                if let mongo = (error as? BrokerError)?.mongoError {
                    let resumable =
                        mongo.isConnectivity || Self.resumableCodes.contains(mongo.code) || mongo.labels.contains("ResumableChangeStreamError")
                    if !resumable {
                        // History lost (286) or anything else unrecoverable: start again from now and rescan.
                        logger.warning("change stream lost; reopening from now", metadata: [LogKey.topic: "\(label)", LogKey.error: "\(mongo)"])
                        token = nil
                    } else if failures == 1 || failures % 20 == 0 {
                        logger.info("change stream interrupted; resuming", metadata: [LogKey.topic: "\(label)", LogKey.error: "\(mongo)"])
                    }
                } else {
                    token = nil
                    logger.warning("change stream failed; reopening", metadata: [LogKey.topic: "\(label)", LogKey.error: "\(error)"])
                }
                Thread.sleep(forTimeInterval: min(1.0, 0.05 * Double(failures)))
            }
        }
    }

    private func open(
        _ client: MongoClientPool.Client, resumeAfter token: JSONValue?
    ) throws -> (
        cursor: Int64?, token: JSONValue?, documents: [JSONValue], resumed: Bool
    ) {
        var match: [(String, JSONValue)] = [("operationType", .string("insert"))]
        if case .topic(let topic) = target { match.append(("fullDocument.topic", .string(topic))) }
        let reply = try client.command(
            MongoCommand.changeStream(collection, resumeAfter: token, pipeline: [.object([("$match", .object(match))])]), database: database)
        let cursor = reply["cursor"]
        let documents = MongoJSON.array(cursor?["firstBatch"]).compactMap { $0["fullDocument"] }
        return (MongoJSON.integer(cursor?["id"]), cursor?["postBatchResumeToken"], documents, token != nil)
    }
}
