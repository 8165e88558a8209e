import ArgumentParser
import Models

/// `sbctl topics list|describe|create`.
struct Topics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, describe and create topics.",
        subcommands: [List.self, Describe.self, Create.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print each topic's config, one per line.")

        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let answer = try await connection.admin().get("/topics")
            for topic in answer.array("topics") { connection.output.emit(topic) }
        }
    }

    struct Describe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a topic's config and each partition's high-water mark.")

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic.")
        var topic: String

        func validate() throws { try validateName(topic, what: "topic") }

        func run() async throws {
            connection.output.emit(try await connection.admin().get("/topics/\(topic)"))
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a topic, or update its config; prints the stored config.",
            discussion: "Example: sbctl topics create orders.created --partitions 4 --max-attempts 3"
        )

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic.")
        var topic: String

        @Option(help: "Partitions (1...\(Limits.maxPartitions)); they can be added, never removed.")
        var partitions: Int?

        @Option(help: "Deliveries before a message goes to TOPIC.DLQ (default 5).")
        var maxAttempts: Int?

        @Option(help: "How long a delivered message may stay unacked before it is redelivered.")
        var ackTimeoutMs: Int64?

        @Option(help: "How long events are kept (default: forever).")
        var retentionMs: Int64?

        @Option(help: "Delays before redeliveries, comma-separated milliseconds, e.g. 1000,5000,30000.")
        var redeliveryBackoffMs: String?

        func validate() throws {
            try validateName(topic, what: "topic")
            _ = try backoff()
        }

        func run() async throws {
            var members: [(String, JSONValue)] = [("topic", .string(topic))]
            if let partitions { members.append(("partitions", .int(partitions))) }
            if let maxAttempts { members.append(("maxAttempts", .int(maxAttempts))) }
            if let ackTimeoutMs { members.append(("ackTimeoutMs", .int(ackTimeoutMs))) }
            if let retentionMs { members.append(("retentionMs", .int(retentionMs))) }
            if let backoff = try backoff() { members.append(("redeliveryBackoffMs", .array(backoff.map { .int($0) }))) }
            // The broker checks the ranges and answers bad_request with what is wrong.
            connection.output.emit(try await connection.admin().post("/topics", .object(members)))
        }

        private func backoff() throws -> [Int64]? {
            guard let redeliveryBackoffMs else { return nil }
            let steps = redeliveryBackoffMs.split(separator: ",").map { Int64($0.trimmingCharacters(in: .whitespaces)) }
            guard !steps.isEmpty, steps.allSatisfy({ $0 != nil }) else {
                throw ValidationError("--redelivery-backoff-ms must be comma-separated milliseconds, e.g. 1000,5000")
            }
            return steps.map { $0! }
        }
    }
}

/// Topic and group names go into URL paths: check them here (bad usage, exit 2).
func validateName(_ name: String, what: String) throws {
    if let problem = Limits.nameProblem(name, what: what) { throw ValidationError(problem) }
}
