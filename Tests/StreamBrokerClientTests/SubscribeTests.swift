import Foundation
import Models
import Testing

@testable import StreamBrokerClient

/// Subscriptions against a real broker: resuming after a crash, credits, NACK.
@Suite("Client subscriptions", .serialized)
struct SubscribeTests {
    /// A group resumes at its committed position after a broker crash: acked events are not
    /// delivered again, unacked ones are.
    @Test func groupResumesAfterABrokerRestart() async throws {
        let broker = try await BrokerProcess.started(["BUS_COMMIT_INTERVAL_MS": "0"])
        defer { broker.stop() }
        try broker.createTopic(#"{"topic":"billing.orders","partitions":1}"#)
        let client = broker.client()
        try await client.connect()
        for n in 1...10 { try await client.publish(topic: "billing.orders", payload: Order(n: n)) }

        let orders = try await client.subscribe(topic: "billing.orders", group: "billing", from: .earliest, maxInflight: 4)
        var first: [Message] = []
        for _ in 1...5 {
            first += try await take(1, from: orders)
            first.last?.ack()
        }
        first += try await take(1, from: orders)  // taken and never acked
        #expect(first.map(\.offset) == Array(1...6))
        try await waitUntil("offset 5 committed") { try broker.committed("billing.orders", group: "billing") == 5 }

        broker.kill()
        try await broker.start()
        try await client.publish(topic: "billing.orders", payload: Order(n: 11))
        var after: [Message] = []
        for _ in 6...11 {
            after += try await take(1, from: orders)
            after.last?.ack()
        }
        #expect(after.map(\.offset) == Array(6...11), "no acked event again, no unacked event lost")
        try await waitUntil("offset 11 committed") { try broker.committed("billing.orders", group: "billing") == 11 }
        await client.close()
    }

    /// A subscription with a limit ends after that many messages, and the broker was never
    /// granted credits for more: the next member of the group gets the rest as first attempts.
    @Test func aLimitEndsTheSequenceAndGrantsNoMore() async throws {
        let broker = try await BrokerProcess.started(["BUS_COMMIT_INTERVAL_MS": "0"])
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()
        for n in 1...10 { try await client.publish(topic: "limited", payload: Order(n: n)) }
        let three = try await client.subscribe(topic: "limited", group: "g", from: .earliest, maxInflight: 32, limit: 3)
        var taken: [Message] = []
        for try await message in three {
            taken.append(message)
            message.ack()
        }
        #expect(taken.map(\.offset) == [1, 2, 3], "the sequence ends at the limit")
        #expect(three.bufferedCount == 0)
        await client.close()

        let next = broker.client()
        try await next.connect()
        let rest = try await take(7, from: try await next.subscribe(topic: "limited", group: "g", maxInflight: 32))
        #expect(rest.map(\.offset) == Array(4...10))
        #expect(rest.allSatisfy { $0.attempt == 1 }, "nothing beyond the limit was delivered to the first client")
        await next.close()
    }

    /// Acks sent right before `close()` reach the broker: close writes what is queued first.
    @Test func acksRightBeforeCloseAreCommitted() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()
        for n in 1...50 { try await client.publish(topic: "closing", payload: Order(n: n)) }
        let orders = try await client.subscribe(topic: "closing", group: "g", from: .earliest, maxInflight: 64)
        for message in try await take(50, from: orders) { message.ack() }
        await client.close()
        try await waitUntil("offset 50 committed", timeout: .seconds(10)) { try broker.committed("closing", group: "g") == 50 }
    }

    /// An ephemeral tail resumes after the last offset it received.
    @Test func tailResumesAfterTheLastOffsetSeen() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()
        for n in 1...5 { try await client.publish(topic: "tail", payload: Order(n: n)) }
        let tail = try await client.subscribe(topic: "tail", from: .earliest, maxInflight: 16)
        #expect(try await take(5, from: tail).map(\.offset) == Array(1...5))
        #expect(client.state.withLock { $0.subscriptions[tail.id]!.resumePosition } == .offset(6))

        broker.kill()
        try await broker.start()
        for n in 6...8 { try await client.publish(topic: "tail", payload: Order(n: n)) }
        #expect(try await take(3, from: tail).map(\.offset) == Array(6...8))
        await client.close()
    }

    /// With several partitions a tail resumes from the lowest next offset and drops, per
    /// partition, what it already received.
    @Test func tailResumePositionWithSeveralPartitions() {
        var state = SubscriptionState(topic: "t", group: nil, from: .latest, maxInflight: 8, window: 8, filter: SubscriptionFilter(), limit: nil)
        #expect(state.resumePosition == .latest)
        let firsts = [state.accept(partition: 0, offset: 7), state.accept(partition: 1, offset: 3)]
        #expect(firsts == [true, true])
        #expect(state.resumePosition == .offset(4))
        let again = state.accept(partition: 0, offset: 5)
        #expect(!again, "already received on partition 0")
        let next = state.accept(partition: 1, offset: 4)
        #expect(next)
        let group = SubscriptionState(topic: "t", group: "g", from: .earliest, maxInflight: 8, window: 8, filter: SubscriptionFilter(), limit: nil)
        #expect(group.resumePosition == .earliest, "a group sends its first from; the broker applies it only without a committed position")
    }

    /// A consumer that stops iterating holds at most its window: another member of the group
    /// gets everything else, although `max_inflight` would allow far more.
    @Test func aStoppedConsumerHoldsAtMostItsWindow() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        try broker.createTopic(#"{"topic":"work","partitions":1}"#)
        let slow = broker.client()
        let fast = broker.client()
        try await slow.connect()
        try await fast.connect()
        let held = try await slow.subscribe(topic: "work", group: "g", from: .earliest, maxInflight: 1000, window: 4)
        for n in 1...40 { try await fast.publish(topic: "work", payload: Order(n: n)) }
        let taken = try await take(2, from: held)
        for message in taken { message.ack() }

        let others = Collector<Int64>()
        let draining = try await fast.subscribe(topic: "work", group: "g", maxInflight: 1000)
        let drain = Task {
            for try await message in draining {
                others.append(message.offset)
                message.ack()
            }
        }
        try await waitUntil("every event is with one of the two") { others.count + taken.count + held.bufferedCount == 40 }
        #expect(held.bufferedCount <= 4)
        // The held messages are still there to take, and nobody else got them.
        let rest = try await take(held.bufferedCount, from: held)
        #expect(Set(rest.map(\.offset) + taken.map(\.offset) + others.all) == Set(1...40))
        drain.cancel()
        await slow.close()
        await fast.close()
    }

    @Test func nackWithDelayRedelivers() async throws {
        let broker = try await BrokerProcess.started()
        defer { broker.stop() }
        let client = broker.client()
        try await client.connect()
        let jobs = try await client.subscribe(topic: "jobs", group: "g", from: .earliest)
        try await client.publish(topic: "jobs", payload: Order(n: 1))
        let first = try await take(1, from: jobs)[0]
        #expect(first.attempt == 1)
        first.nack(reason: "not yet", delay: .milliseconds(200))
        let second = try await take(1, from: jobs)[0]
        #expect(second.offset == first.offset && second.attempt == 2 && second.id == first.id)
        second.ack()
        await client.close()
    }
}
