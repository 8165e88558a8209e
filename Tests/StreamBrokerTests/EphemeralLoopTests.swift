import Models
import Testing

@testable import StreamBroker

/// A topic's ephemeral subscriptions share one dispatcher, which ends with its last subscriber.
@Suite("Ephemeral dispatcher")
struct EphemeralLoopTests {
    /// Polls `condition` until it holds or five seconds passed (real time: the store's thread).
    func eventually(_ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    @Test func subscribersShareOneDispatcherThatEndsWithTheLast() async throws {
        let store = SQLiteStore(location: .memory)
        let broker = Broker(store: store)
        try await broker.openStore()  // once: `run` does not open it again
        _ = try await DirectPublisher(store: store).publish(topic: "eph", json: "1")
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await broker.run() }
            let a = broker.connect()
            let b = broker.connect()
            a.handle(.subscribe(SubscribeRequest(topic: "eph", group: nil, from: .earliest)))
            b.handle(.subscribe(SubscribeRequest(topic: "eph", group: nil)))
            _ = await frame(from: b.connection) { $0.contains(#""type":"SUBSCRIBED""#) }
            let replayed = await frame(from: a.connection) { $0.contains(#""type":"MESSAGE""#) }
            #expect(replayed.contains(#""offset":1"#) && replayed.contains(#""group":null"#))
            let shared = broker.dispatchers(of: "eph")
            #expect(shared.count == 1)

            _ = try? await DirectPublisher(store: store).publish(topic: "eph", json: "2")
            for session in [a, b] {
                let message = await frame(from: session.connection) { $0.contains(#""type":"MESSAGE""#) }
                #expect(message.contains(#""offset":2"#))
            }

            a.close()
            b.close()
            #expect(await eventually { broker.dispatchers(of: "eph").isEmpty }, "the last subscriber left: the dispatcher ended")
            let c = broker.connect()
            c.handle(.subscribe(SubscribeRequest(topic: "eph", group: nil, rid: "again")))
            let reply = await frame(from: c.connection) { !$0.isEmpty }
            #expect(reply.contains(#""type":"SUBSCRIBED""#), "a later SUBSCRIBE gets a new dispatcher")
            #expect(broker.dispatchers(of: "eph").map(\.serial) != shared.map(\.serial))
            c.close()
            group.cancelAll()
        }
        await store.close()
    }

    @Test func aSubscribeThatOnlyMeetsEndedDispatchersIsAnswered() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        let broker = Broker(store: store)
        // An ephemeral dispatcher that ended but is still registered: what a SUBSCRIBE may
        // meet between the registry lookup and its send, here on both tries.
        let ended = broker.dispatcher(topic: "gone", group: nil)
        #expect(ended.finishIfIdle())
        let session = broker.connect()
        session.handle(.subscribe(SubscribeRequest(topic: "gone", group: nil, rid: "s")))
        let reply = await frame(from: session.connection) { !$0.isEmpty }
        #expect(reply.contains(#""type":"ERROR""#) && reply.contains(#""rid":"s""#), "answered, not left waiting")
        await store.close()
    }
}
