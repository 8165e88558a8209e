import Models
import Testing

@testable import StreamBroker

/// The dispatcher loop with its timer on a manual clock: time moves only when the test moves
/// it, so an ack timeout and a batched commit are checked at their exact edges, without sleeps.
@Suite("Dispatcher loop on a manual clock")
struct DispatcherClockTests {
    @Test func ackTimeoutAndCommitFollowTheInjectedClock() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        var settings = BrokerSettings()
        settings.ackTimeoutMs = 5_000
        settings.commitIntervalMs = 100
        // Every ack wakes the loop, so that the timer sleeps exactly until the ack deadline.
        settings.acksDeferred = false
        let broker = Broker(store: store, settings: settings)
        _ = try await DirectPublisher(store: store).publish(topic: "clocked", json: "1")
        let clock = ManualClock()
        let start = clock.now
        let dispatcher = GroupDispatcher(topic: "clocked", group: "g", serial: 1, broker: broker)
        let connection = ClientConnection(id: 1)
        let session = Session(broker: broker, connection: connection)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await dispatcher.run(clock: clock) }
            dispatcher.send(.subscribe(session, SubscribeRequest(topic: "clocked", group: "g", from: .earliest)))
            let first = await frame(from: connection) { $0.contains(#""type":"MESSAGE""#) }
            #expect(first.contains(#""attempt":1"#))

            // The timer sleeps until the ack deadline; a millisecond before it nothing happens.
            await clock.waitForSleepers { $0 == [start.advanced(by: .seconds(5))] }
            clock.advance(by: .milliseconds(4_999))
            #expect(clock.sleepingUntil == [start.advanced(by: .seconds(5))])
            clock.advance(by: .milliseconds(1))
            let second = await frame(from: connection) { $0.contains(#""type":"MESSAGE""#) }
            #expect(second.contains(#""attempt":2"#))

            // An ack arms the batched commit: nothing is written until the interval passed.
            dispatcher.send(.ack(partition: 0, offset: 1))
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(5_100))] }
            #expect((try? await store.positions(topic: "clocked", group: "g"))?.first?.lastCommitted == 0)
            clock.advance(by: .milliseconds(100))
            let committed = await eventually { (try? await store.positions(topic: "clocked", group: "g").first?.lastCommitted) == 1 }
            #expect(committed)
            await dispatcher.stop()
        }
        await store.close()
    }

    @Test func aDeferredAckIsTakenAtTheSweepAndCommittedAnIntervalLater() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        var settings = BrokerSettings()
        settings.ackTimeoutMs = 5_000
        settings.commitIntervalMs = 100
        let broker = Broker(store: store, settings: settings)
        _ = try await DirectPublisher(store: store).publish(topic: "swept", json: "1")
        let clock = ManualClock()
        let start = clock.now
        let dispatcher = GroupDispatcher(topic: "swept", group: "g", serial: 1, broker: broker)
        let connection = ClientConnection(id: 1)
        let session = Session(broker: broker, connection: connection)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await dispatcher.run(clock: clock) }
            dispatcher.send(.subscribe(session, SubscribeRequest(topic: "swept", group: "g", from: .earliest)))
            _ = await frame(from: connection) { $0.contains(#""type":"MESSAGE""#) }
            // Caught up with a message in flight: the timer sweeps within the commit interval.
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(100))] }
            // The loop says so once its batch is done (just after it armed the timer).
            let mayWait = await eventually { dispatcher.acksMayWait.load(ordering: .relaxed) }
            #expect(mayWait)
            dispatcher.send(.ack(partition: 0, offset: 1))
            #expect(clock.sleepingUntil == [start.advanced(by: .milliseconds(100))], "the queued ack did not wake the loop")
            clock.advance(by: .milliseconds(100))
            // The sweep took the ack; its commit is due one interval later.
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(200))] }
            #expect((try? await store.positions(topic: "swept", group: "g"))?.first?.lastCommitted == 0)
            clock.advance(by: .milliseconds(100))
            let committed = await eventually { (try? await store.positions(topic: "swept", group: "g").first?.lastCommitted) == 1 }
            #expect(committed)
            await dispatcher.stop()
        }
        await store.close()
    }

    /// Polls `condition` until it holds or five seconds passed (real time: the store's thread).
    func eventually(_ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}
