import ArgumentParser
import Foundation
import Models
import StreamBrokerClient

/// `sbctl dlq list|redrive|purge`: a topic's dead letters (the events in `TOPIC.DLQ`), through
/// the broker's DLQ HTTP API (SPEC §14).
struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, redrive and purge a topic's dead letters (the events in TOPIC.DLQ).",
        subcommands: [List.self, Redrive.self, Purge.self]
    )

    /// `?group=` for the dead letters of one consumer group (their `x-original-group`).
    static func groupQuery(_ group: String?) -> String {
        group.map { "group=\($0)" } ?? ""
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print each dead letter's envelope (x-original-topic, -partition, -offset, -group, x-attempts, x-last-reason headers).")

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic whose dead letters to list.")
        var topic: String

        @Option(help: "Only the dead letters of this consumer group (their x-original-group).")
        var group: String?

        @Option(help: "Print at most this many (default 10000).")
        var limit: Int?

        func validate() throws {
            try validateName(topic, what: "topic")
            if let group { try validateName(group, what: "group") }
            if let limit, !(1...10_000).contains(limit) { throw ValidationError("--limit must be in 1...10000") }
        }

        func run() async throws {
            let query = ["limit=\(limit ?? 10_000)", DeadLetters.groupQuery(group)].filter { !$0.isEmpty }.joined(separator: "&")
            let answer = try await connection.admin().get("/topics/\(topic)/dlq?\(query)")
            for deadLetter in answer.array("deadLetters") { connection.output.emit(deadLetter) }
        }
    }

    struct Redrive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish each dead letter again to its topic (needs admin).",
            discussion: """
                Each dead letter goes back to TOPIC with its key, payload and headers (less the dead-letter headers), \
                under an id derived from the dead letter's: a second redrive stores nothing twice (its lines say \
                "duplicate": true). Prints one line per dead letter: where it was and where it went.
                """
        )

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic whose dead letters to redrive.")
        var topic: String

        @Option(help: "Only the dead letters of this consumer group (their x-original-group).")
        var group: String?

        func validate() throws {
            try validateName(topic, what: "topic")
            if let group { try validateName(group, what: "group") }
        }

        func run() async throws {
            let query = DeadLetters.groupQuery(group)
            let answer = try await connection.admin().post("/topics/\(topic)/dlq/redrive\(query.isEmpty ? "" : "?" + query)", .object([]))
            for result in answer.array("results") { connection.output.emit(result) }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete every dead letter of a topic (needs admin).")

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic whose dead letters to delete.")
        var topic: String

        func validate() throws {
            try validateName(topic, what: "topic")
        }

        func run() async throws {
            connection.output.emit(try await connection.admin().post("/topics/\(topic)/dlq/purge", .object([])))
        }
    }
}
