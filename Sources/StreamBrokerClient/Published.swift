/// The broker's confirmation of a stored event (a `PUBLISHED` frame).
///
/// ```swift
/// let confirmation = try await client.publish(topic: "orders.created", payload: ["n": 1])
/// print(confirmation.partition, confirmation.offset, confirmation.duplicate)
/// ```
public struct Published: Sendable, Equatable {
    public var topic: String
    public var partition: Int
    public var offset: Int64
    /// The event's id: the one the client sent with the publish.
    public var id: String
    /// True when an event with this id was already stored (a retried publish): nothing new was stored.
    public var duplicate: Bool

    public init(topic: String, partition: Int, offset: Int64, id: String, duplicate: Bool) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.id = id
        self.duplicate = duplicate
    }
}
