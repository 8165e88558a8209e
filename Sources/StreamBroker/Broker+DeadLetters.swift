import Models

// Dead letters (SPEC §6, §14): a topic's failed messages live in `TOPIC.DLQ`; these list them,
// send them back to the topic, and delete them.
extension Broker {
    /// Where `topic`'s dead letters go.
    public static func deadLetterTopic(of topic: String) -> String { "\(topic).DLQ" }

    /// The headers the broker adds to a dead letter (SPEC §6); a redrive drops them.
    public static func isDeadLetterHeader(_ name: String) -> Bool {
        name.hasPrefix("x-original-") || name == "x-attempts" || name == "x-last-reason"
    }

    /// The id of a redriven event: derived from the dead letter's place and id, so a second
    /// redrive of the same dead letter is a duplicate the store keeps once.
    public static func redriveID(partition: Int, offset: Int64, id: String) -> String {
        var derived = "redrive:\(partition):\(offset):"
        for character in id {
            guard derived.utf8.count + character.utf8.count <= Limits.maxIDBytes else { break }
            derived.append(character)
        }
        return derived
    }

    /// `topic`'s dead letters in partition and offset order, those of `group` only when given
    /// (their `x-original-group`), at most `limit`.
    /// - Throws: `not_found` when `topic` does not exist.
    public func deadLetters(topic: String, group: String?, limit: Int) async throws -> [Event] {
        guard try await configs.lookup(topic) != nil else { throw RequestError(.notFound, "no topic '\(topic)'") }
        guard let config = try await configs.lookup(Self.deadLetterTopic(of: topic)) else { return [] }
        var found: [Event] = []
        for partition in 0..<config.partitions {
            guard var from = try await store.lowestOffset(topic: config.topic, partition: partition) else { continue }
            while found.count < limit {
                let page = try await store.read(topic: config.topic, partition: partition, from: from, limit: 1000)
                guard let last = page.last else { break }
                for event in page where group == nil || event.headers?["x-original-group"] == group {
                    found.append(event)
                    if found.count == limit { break }
                }
                from = last.offset + 1
            }
        }
        return found
    }

    /// One dead letter sent back to its topic.
    public struct Redriven: Sendable {
        public let deadLetter: Event
        public let published: AppendResult
    }

    /// Publishes each of `topic`'s dead letters (of `group`, when given) to `topic` again, with
    /// its key, payload and headers (less the dead-letter headers) under an id derived from the
    /// dead letter's: a second redrive stores nothing twice (each result says `duplicate`).
    public func redriveDeadLetters(topic: String, group: String?) async throws -> [Redriven] {
        var redriven: [Redriven] = []
        for deadLetter in try await deadLetters(topic: topic, group: group, limit: .max) {
            let headers = (deadLetter.headers?.pairs ?? []).filter { !Self.isDeadLetterHeader($0.0) }
            let request = PublishRequest(
                topic: topic, key: deadLetter.key, headers: headers.isEmpty ? nil : Headers(headers), payload: deadLetter.payload,
                id: Self.redriveID(partition: deadLetter.partition, offset: deadLetter.offset, id: deadLetter.id))
            redriven.append(Redriven(deadLetter: deadLetter, published: try await publish(request)))
        }
        if !redriven.isEmpty {
            audit(kind: "dlq.redrive", topic: topic, fields: [("group", group.map(JSONValue.string) ?? .null), ("count", .int(redriven.count))])
        }
        return redriven
    }

    /// Deletes every dead letter of `topic`; returns how many.
    /// - Throws: `not_found` when `topic` does not exist.
    public func purgeDeadLetters(topic: String) async throws -> Int {
        guard try await configs.lookup(topic) != nil else { throw RequestError(.notFound, "no topic '\(topic)'") }
        guard try await configs.lookup(Self.deadLetterTopic(of: topic)) != nil else { return 0 }
        // Every one, whatever its time (the embedded store may stamp events after the clock's
        // `now` when the clock was set back).
        let purged = try await store.deleteEvents(topic: Self.deadLetterTopic(of: topic), olderThan: .max)
        audit(kind: "dlq.purge", topic: topic, fields: [("count", .int(purged))])
        return purged
    }
}
