import Foundation
import Models
import Testing

@testable import StreamBrokerClient

@Suite("TaskQueue", .serialized)
struct TaskQueueTests {
    struct Failed: Error, CustomStringConvertible {
        var n: Int
        var description: String { "task \(n) failed" }
    }

    /// Tasks whose handler returns are acked once; tasks whose handler throws are redelivered
    /// and reach `${topic}.DLQ` after the topic's `maxAttempts` (2), with the error's text.
    @Test func ackOnReturnNackOnThrowAndDeadLetter() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        try broker.createTopic(#"{"topic":"emails","maxAttempts":2}"#)
        let client = broker.client()
        try await client.connect()
        let queue = TaskQueue(client: client, topic: "emails")
        for n in 1...9 { try await queue.enqueue(Order(n: n), key: "k\(n)") }

        let done = Collector<Int>()
        let failures = Collector<Int>()
        let worker = Task {
            try await queue.run(concurrency: 3) { task in
                let n = try task.decode(Order.self).n
                if n % 3 == 0 {
                    failures.append(n)
                    throw Failed(n: n)
                }
                done.append(n)
            }
        }
        let dlq = try await client.subscribe(topic: "emails.DLQ", from: .earliest)
        let dead = try await take(3, from: dlq)
        #expect(Set(try dead.map { try $0.decode(Order.self).n }) == [3, 6, 9])
        #expect(dead.allSatisfy { $0.headers?["x-attempts"] == "2" && $0.headers?["x-original-topic"] == "emails" })
        #expect(dead.allSatisfy { $0.headers?["x-last-reason"]?.contains("failed") == true })
        try await waitUntil("every other task done") { done.count == 6 }
        #expect(Set(done.all) == [1, 2, 4, 5, 7, 8])
        #expect(failures.all.sorted() == [3, 3, 6, 6, 9, 9], "each failing task ran maxAttempts times")
        worker.cancel()
        _ = await worker.result
        await client.close()
    }
}
