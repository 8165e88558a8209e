import ArgumentParser
import Models

/// `sbctl groups offsets|reset`.
struct Groups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show and move consumer groups' positions.",
        subcommands: [Offsets.self, Reset.self]
    )

    struct Offsets: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print each group's committed offset, high-water mark and lag, one line per group and partition.")

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The topic.")
        var topic: String

        func validate() throws { try validateName(topic, what: "topic") }

        func run() async throws {
            let answer = try await connection.admin().get("/topics/\(topic)/offsets")
            for group in answer.array("groups") {
                for partition in group.array("partitions") {
                    guard case .object(let members) = partition else { continue }
                    connection.output.emit(.object([("topic", .string(topic)), ("group", group["group"] ?? .null)] + members))
                }
            }
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a group to a position; its next deliveries start there.",
            discussion: "Example: sbctl groups reset billing orders.created --to earliest"
        )

        @OptionGroup var connection: ConnectionOptions

        @Argument(help: "The group.")
        var group: String

        @Argument(help: "The topic.")
        var topic: String

        @Option(help: "earliest, latest, offset:N (the first offset to deliver) or time:MS (epoch ms).")
        var to: StartPosition

        func validate() throws {
            try validateName(group, what: "group")
            try validateName(topic, what: "topic")
        }

        func run() async throws {
            let answer = try await connection.admin().post("/groups/\(group)/topics/\(topic)/reset", .object([("from", to.jsonValue)]))
            connection.output.emit(answer)
        }
    }
}
