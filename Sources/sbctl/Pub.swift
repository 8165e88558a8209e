import ArgumentParser
import Foundation
import Models
import StreamBrokerClient

/// `sbctl pub TOPIC JSON`: publishes one event and prints the broker's confirmation.
struct Pub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish one event and print its confirmation (topic, partition, offset, id, duplicate).",
        discussion: "Example: sbctl pub orders.created '{\"n\":1}' --key cust-7 --header ct=json"
    )

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The topic.")
    var topic: String

    @Argument(help: "The payload: one JSON value; '-' reads it from standard input.")
    var json: String

    @Option(help: "The event key (chooses the partition).")
    var key: String?

    @Option(name: .customLong("header"), help: "A header as name=value; repeat for more.")
    var headers: [String] = []

    @Option(help: "The event id (default: a new UUID); publishing the same id again stores nothing.")
    var id: String?

    func validate() throws {
        _ = try parsedHeaders()
        if json != "-" { _ = try payload(Array(json.utf8)) }
    }

    func run() async throws {
        let bytes = json == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : Array(json.utf8)
        let payload = try payload(bytes)
        let headers = try parsedHeaders()
        let (topic, key, id, output) = (topic, key, id, connection.output)
        let timeout = connection.timeout
        let published = try await connection.withClient { client in
            try await withTimeout(seconds: timeout, failure: .timeout("the confirmation", seconds: timeout)) {
                try await client.publish(topic: topic, key: key, headers: headers, payload: payload, id: id)
            }
        }
        output.emit(published.jsonValue)
    }

    private func payload(_ bytes: [UInt8]) throws -> RawJSON {
        do {
            return try RawJSON(validating: bytes)
        } catch {
            throw ValidationError("the payload is not valid JSON: \(error)")
        }
    }

    private func parsedHeaders() throws -> [String: String] {
        try Self.parseHeaders(headers)
    }

    /// `name=value` pairs; the value may hold '='.
    static func parseHeaders(_ pairs: [String]) throws -> [String: String] {
        var headers: [String: String] = [:]
        for pair in pairs {
            guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                throw ValidationError("--header '\(pair)' must look like name=value")
            }
            headers[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
        }
        return headers
    }
}

extension Published {
    var jsonValue: JSONValue {
        .object([
            ("topic", .string(topic)), ("partition", .int(partition)), ("offset", .int(offset)), ("id", .string(id)),
            ("duplicate", .bool(duplicate)),
        ])
    }
}
