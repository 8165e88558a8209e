import ArgumentParser
import Foundation
import Models
import StreamBrokerClient

/// `sbctl dlq list|redrive`: the dead letters of a topic, in `TOPIC.DLQ`.
struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List and redrive a topic's dead letters (the events in TOPIC.DLQ).",
        subcommands: [List.self, Redrive.self]
    )

    /// The headers the broker adds to a dead letter (SPEC §6); a redrive drops them.
    static func isDeadLetterHeader(_ name: String) -> Bool {
        name.hasPrefix("x-original-") || name == "x-attempts" || name == "x-last-reason"
    }

    /// The id of a redriven event: derived from the dead letter's place and id, so a second
    /// redrive of the same dead letter is a duplicate the broker stores once.
    static func redriveID(partition: Int, offset: Int64, id: String) -> String {
        var derived = "redrive:\(partition):\(offset):"
        for character in id {
            guard derived.utf8.count + character.utf8.count <= Limits.maxIDBytes else { break }
            derived.append(character)
        }
        return derived
    }

    /// Each partition's high-water mark of `TOPIC.DLQ`; nil when there has never been a dead letter
    /// (after checking that `TOPIC` itself exists, else `not_found`).
    static func deadLetterMarks(_ admin: AdminAPI, topic: String) async throws -> [Int: Int64]? {
        let described: JSONValue
        do {
            described = try await admin.get("/topics/\(topic).DLQ")
        } catch let failure as CommandFailure where failure.code == ErrorCode.notFound.rawValue {
            _ = try await admin.get("/topics/\(topic)")
            return nil
        }
        var marks: [Int: Int64] = [:]
        for partition in described.array("partitions") {
            if let p = partition["partition"]?.int64, let mark = partition["highWatermark"]?.int64 { marks[Int(p)] = mark }
        }
        return marks
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print each dead letter's envelope (x-original-topic, -partition, -offset, -group, x-attempts, x-last-reason headers).")

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic whose dead letters to list.")
        var topic: String

        @Option(help: "Print at most this many.")
        var limit: Int?

        func validate() throws {
            try validateName(topic, what: "topic")
            if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        }

        func run() async throws {
            let admin = try connection.admin()
            guard let marks = try await DeadLetters.deadLetterMarks(admin, topic: topic) else { return }
            var remaining = limit ?? Int.max
            for (partition, mark) in marks.sorted(by: { $0.key < $1.key }) {
                var from: Int64 = 1
                while from <= mark, remaining > 0 {
                    let page = try await admin.get("/topics/\(topic).DLQ/events?partition=\(partition)&from=\(from)&limit=\(min(1000, remaining))")
                    let events = page.array("events")
                    guard let last = events.last?["offset"]?.int64 else { break }
                    for event in events.prefix(remaining) { connection.output.emit(event) }
                    remaining -= min(remaining, events.count)
                    from = last + 1
                }
            }
        }
    }

    struct Redrive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish each dead letter again to its original topic, then ack it in --group.",
            discussion: """
                Each dead letter goes back to its x-original-topic with its key, payload and headers (less the dead-letter \
                headers), under an id derived from the dead letter's: a second redrive stores nothing twice. The dead \
                letters are read as the consumer group --group of TOPIC.DLQ, so each is redriven once per group. \
                Prints one line per dead letter: where it was and where it went.
                """
        )

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic whose dead letters to redrive.")
        var topic: String

        @Option(help: "The consumer group of TOPIC.DLQ that records what was redriven.")
        var group: String = "sbctl-redrive"

        func validate() throws {
            try validateName(topic, what: "topic")
            try validateName(group, what: "group")
        }

        func run() async throws {
            let admin = try connection.admin()
            guard let marks = try await DeadLetters.deadLetterMarks(admin, topic: topic) else { return }
            let (topic, group, timeout, output) = (topic, group, connection.timeout, connection.output)
            let deadLetterTopic = "\(topic).DLQ"
            try await connection.withClient { client in
                let subscription = try await withTimeout(seconds: timeout, failure: .timeout("SUBSCRIBE", seconds: timeout)) {
                    try await client.subscribe(topic: deadLetterTopic, group: group, from: .earliest, maxInflight: 256)
                }
                // What is left for this group: partitions whose committed offset is below the mark.
                let committed = try await Self.committed(admin, topic: deadLetterTopic, group: group)
                var pending = marks.filter { committed[$0.key, default: 0] < $0.value }
                let lastProgress = Counter(Self.nowMs())
                let watchdog = Task {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .milliseconds(200))
                        if Self.nowMs() - lastProgress.value > Int(timeout * 1000) {
                            subscription.unsubscribe()
                            return
                        }
                    }
                }
                defer { watchdog.cancel() }
                try await withThrowingTaskGroup(of: Void.self) { republishing in
                    var inFlight = 0
                    if !pending.isEmpty {
                        for try await message in subscription {
                            lastProgress.store(Self.nowMs())
                            if let mark = pending[message.partition], message.offset >= mark { pending[message.partition] = nil }
                            if inFlight >= 64 {
                                try await republishing.next()
                                inFlight -= 1
                            }
                            inFlight += 1
                            republishing.addTask {
                                let published = try await client.publish(
                                    topic: message.headers?["x-original-topic"] ?? topic, key: message.key,
                                    headers: Dictionary(
                                        (message.headers?.pairs ?? []).filter { !DeadLetters.isDeadLetterHeader($0.0) }, uniquingKeysWith: { $1 }),
                                    payload: message.payload,
                                    id: DeadLetters.redriveID(partition: message.partition, offset: message.offset, id: message.id))
                                message.ack()
                                lastProgress.store(Self.nowMs())
                                output.emit(
                                    .object([
                                        (
                                            "deadLetter",
                                            .object([
                                                ("topic", .string(deadLetterTopic)), ("partition", .int(message.partition)),
                                                ("offset", .int(message.offset)), ("id", .string(message.id)),
                                            ])
                                        ),
                                        ("published", published.jsonValue),
                                    ]))
                            }
                            if pending.isEmpty { break }
                        }
                    }
                    try await republishing.waitForAll()
                }
                if !pending.isEmpty {
                    throw CommandFailure(
                        code: "timeout", message: "no dead letter arrived for \(timeout.formatted()) s with some still to redrive (--timeout)")
                }
                // The acks are sent; wait until the broker has committed them, so the next redrive starts after them.
                let deadline = Self.nowMs() + Int(timeout * 1000)
                while true {
                    let now = try await Self.committed(admin, topic: deadLetterTopic, group: group)
                    if marks.allSatisfy({ now[$0.key, default: 0] >= $0.value }) { break }
                    guard Self.nowMs() < deadline else {
                        throw CommandFailure(code: "timeout", message: "the broker did not commit the acks within \(timeout.formatted()) s")
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        }

        static func committed(_ admin: AdminAPI, topic: String, group: String) async throws -> [Int: Int64] {
            let answer = try await admin.get("/topics/\(topic)/offsets")
            var committed: [Int: Int64] = [:]
            for entry in answer.array("groups") where entry["group"]?.stringValue == group {
                for partition in entry.array("partitions") {
                    if let p = partition["partition"]?.int64, let offset = partition["committed"]?.int64 { committed[Int(p)] = offset }
                }
            }
            return committed
        }

        static func nowMs() -> Int { Int(Date().timeIntervalSince1970 * 1000) }
    }
}
