import Foundation
import Models

/// One delivered event (a `MESSAGE` frame) with its envelope, to be acked or nacked.
///
/// ```swift
/// for try await message in try await client.subscribe(topic: "orders.created", group: "billing") {
///     let order = try message.decode(Order.self)
///     try await bill(order)
///     message.ack()
/// }
/// ```
public struct Message: Sendable {
    public var topic: String
    public var partition: Int
    /// The group the message was delivered to; nil for an ephemeral subscription.
    public var group: String?
    public var offset: Int64
    /// Deliveries so far, this one included (1 on the first delivery).
    public var attempt: Int
    /// The event id.
    public var id: String
    /// The event's time, epoch milliseconds.
    public var ts: Int64
    public var key: String?
    public var headers: Headers?
    public var payload: RawJSON

    let client: StreamBrokerClient?
    let generation: Int

    /// Makes a message by hand (e.g. to test a handler); it belongs to no connection, so
    /// ``ack()`` and ``nack(reason:delay:)`` do nothing.
    public init(
        topic: String, partition: Int, group: String?, offset: Int64, attempt: Int, id: String, ts: Int64, key: String?,
        headers: Headers?, payload: RawJSON
    ) {
        self.init(
            topic: topic, partition: partition, group: group, offset: offset, attempt: attempt, id: id, ts: ts, key: key,
            headers: headers, payload: payload, client: nil, generation: 0)
    }

    init(
        topic: String, partition: Int, group: String?, offset: Int64, attempt: Int, id: String, ts: Int64, key: String?,
        headers: Headers?, payload: RawJSON, client: StreamBrokerClient?, generation: Int
    ) {
        self.topic = topic
        self.partition = partition
        self.group = group
        self.offset = offset
        self.attempt = attempt
        self.id = id
        self.ts = ts
        self.key = key
        self.headers = headers
        self.payload = payload
        self.client = client
        self.generation = generation
    }

    /// Decodes the payload with `JSONDecoder`.
    public func decode<T: Decodable>(_ type: T.Type, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(type, from: Data(payload.bytes))
    }

    /// Acknowledges the message: the group is done with it.
    ///
    /// Nothing is sent for an ephemeral subscription (nothing to commit), nor when the connection
    /// the message came on has dropped since: the broker then delivers the message again.
    public func ack() {
        guard let group, let client else { return }
        var w = JSONObjectWriter(capacity: 128)
        w.string("type", "ACK")
        w.string("topic", topic)
        w.int("partition", partition)
        w.string("group", group)
        w.int("offset", offset)
        client.send(w.finish(), onGeneration: generation)
    }

    /// Refuses the message: the broker delivers it again after `delay` (or the topic's backoff),
    /// with `attempt` + 1, until the topic's `maxAttempts` sends it to `${topic}.DLQ`.
    ///
    /// - Parameters:
    ///   - reason: Kept as the `x-last-reason` header if the message reaches the DLQ.
    ///   - delay: How long to wait before the redelivery; nil for the topic's backoff (default 0).
    public func nack(reason: String? = nil, delay: Duration? = nil) {
        guard let group, let client else { return }
        var w = JSONObjectWriter(capacity: 160)
        w.string("type", "NACK")
        w.string("topic", topic)
        w.int("partition", partition)
        w.string("group", group)
        w.int("offset", offset)
        w.optionalString("reason", reason.map { String($0.prefix(1000)) })
        if let delay {
            let ms = delay.wholeMilliseconds
            w.int("delay_ms", min(max(0, ms), 86_400_000))
        }
        client.send(w.finish(), onGeneration: generation)
    }
}
