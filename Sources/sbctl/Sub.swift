import ArgumentParser
import Models
import StreamBrokerClient

/// `sbctl sub TOPIC`: prints each message's envelope, one per line, acking it unless `--no-ack`.
struct Sub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Subscribe and print each envelope as a line; acked unless --no-ack.",
        discussion: """
            Without --group the subscription is an ephemeral tail. Without --count it runs until interrupted. \
            Example: sbctl sub orders.created --group billing --from earliest --count 10
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The topic.")
    var topic: String

    @Option(help: "The consumer group (default: an ephemeral tail, nothing acked or committed).")
    var group: String?

    @Option(help: "Where a new group or a tail starts: earliest, latest, offset:N or time:MS (epoch ms).")
    var from: StartPosition?

    @Option(help: "Stop after this many messages.")
    var count: Int?

    @Flag(help: "Leave messages unacked (the group gets them again after the ack timeout or on disconnect).")
    var noAck = false

    @Option(help: "The most unacked messages at once.")
    var maxInflight: Int = 32

    @Option(help: "With --count: fail (exit 1) if fewer messages arrive within this many seconds.")
    var wait: Double?

    func validate() throws {
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        guard (1...Limits.maxInflight).contains(maxInflight) else {
            throw ValidationError("--max-inflight must be in 1...\(Limits.maxInflight)")
        }
        if let wait {
            guard count != nil else { throw ValidationError("--wait needs --count") }
            guard wait > 0 else { throw ValidationError("--wait must be a positive number of seconds") }
        }
    }

    func run() async throws {
        let (topic, group, from, count, ack, maxInflight, output) = (topic, group, from, count, !noAck, maxInflight, connection.output)
        let timeout = connection.timeout
        let wait = wait
        try await connection.withClient(pingInterval: .seconds(15)) { client in
            let subscription = try await withTimeout(seconds: timeout, failure: .timeout("SUBSCRIBE", seconds: timeout)) {
                try await client.subscribe(topic: topic, group: group, from: from, maxInflight: maxInflight, limit: count)
            }
            let consume: @Sendable () async throws -> Int = {
                var received = 0
                for try await message in subscription {
                    output.emit(message.envelope.envelopeJSON)
                    if ack { message.ack() }
                    received += 1
                    if let count, received >= count { break }
                }
                return received
            }
            let received: Int
            if let wait, let count {
                received = try await withTimeout(
                    seconds: wait,
                    failure: CommandFailure(code: "timeout", message: "fewer than \(count) messages within \(wait.formatted()) s (--wait)"),
                    consume)
            } else {
                received = try await consume()
            }
            if let count, received < count {
                throw CommandFailure(code: "unavailable", message: "the subscription ended after \(received) of \(count) messages")
            }
        }
    }
}

extension Message {
    /// The event as the broker sent it in the `MESSAGE` frame's `envelope`.
    var envelope: Event {
        Event(topic: topic, partition: partition, offset: offset, id: id, ts: ts, key: key, headers: headers, payload: payload)
    }
}
