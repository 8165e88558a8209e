import Foundation
import Models

/// A work queue on a topic (the sketch's `TaskQueue`): producers ``enqueue(_:key:)`` tasks, and
/// workers in one group ``run(concurrency:_:)`` a handler on each, acked when it returns and
/// nacked with the error's text when it throws (redelivered until the topic's `maxAttempts`
/// sends it to `${topic}.DLQ`).
///
/// ```swift
/// let queue = TaskQueue(client: client, topic: "emails.send")
/// try await queue.enqueue(Email(to: "a@example.com"))
/// try await queue.run(concurrency: 4) { task in
///     let email = try task.decode(Email.self)
///     try await mailer.send(email)  // a throw NACKs the task with the error's text
/// }
/// ```
public struct TaskQueue: Sendable {
    public let client: StreamBrokerClient
    public let topic: String
    /// The workers' group (the sketch's default, `workers`).
    public let group: String

    public init(client: StreamBrokerClient, topic: String, group: String = "workers") {
        self.client = client
        self.topic = topic
        self.group = group
    }

    /// Adds a task (any `Encodable` value, stored as its JSON) and waits for the broker to store it.
    @discardableResult
    public func enqueue<Payload: Encodable>(_ task: Payload, key: String? = nil) async throws -> Published {
        try await client.publish(topic: topic, key: key, payload: task)
    }

    /// Adds a task given as JSON and waits for the broker to store it.
    @discardableResult
    public func enqueue(json task: RawJSON, key: String? = nil) async throws -> Published {
        try await client.publish(topic: topic, key: key, payload: task)
    }

    /// Runs `handler` on each task, at most `concurrency` at a time, until the calling task is
    /// cancelled or the client is closed.
    ///
    /// A new group starts at the earliest task still stored, so tasks enqueued before the first
    /// worker started are not skipped; afterwards the group resumes at its committed position.
    /// - Throws: ``StreamBrokerClientError`` when the broker refuses the subscription.
    public func run(concurrency: Int = 16, _ handler: @escaping @Sendable (Message) async throws -> Void) async throws {
        let width = max(1, concurrency)
        let tasks = try await client.subscribe(topic: topic, group: group, from: .earliest, maxInflight: width)
        defer { tasks.unsubscribe() }
        try await withThrowingTaskGroup(of: Void.self) { running in
            var busy = 0
            var iterator = tasks.makeAsyncIterator()
            while true {
                if busy >= width {
                    try await running.next()
                    busy -= 1
                }
                guard let task = try await iterator.next() else { break }
                busy += 1
                running.addTask {
                    do {
                        try await handler(task)
                        task.ack()
                    } catch {
                        task.nack(reason: String(describing: error))
                    }
                }
            }
            try await running.waitForAll()
        }
    }
}
