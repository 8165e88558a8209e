import Models
import Testing

@testable import StreamBroker

/// Leases kept by a fake store whose expiry is judged by the same manual clock.
actor FakeCoordination: Coordination {
    struct Lease {
        var owner: String?
        var epoch: Int64
        var expiresAt: ManualClock.Instant
    }

    let clock: ManualClock
    var leases: [String: Lease] = [:]
    var calls: [String] = []

    init(clock: ManualClock) { self.clock = clock }

    func hold(_ id: String, owner: String, epoch: Int64, ttlMs: Int64) {
        leases[id] = Lease(owner: owner, epoch: epoch, expiresAt: clock.now.advanced(by: .milliseconds(ttlMs)))
    }

    func heartbeat(topic: String, group: String, replica: String) async throws { calls.append("heartbeat") }
    func leave(topic: String, group: String, replica: String) async throws { calls.append("leave") }
    func liveReplicas(topic: String, group: String, ttlMs: Int64) async throws -> [String] { ["a"] }

    func takeLease(_ id: String, owner: String, ttlMs: Int64) async throws -> Int64? {
        calls.append("take \(id)")
        let now = clock.now
        if let lease = leases[id], let holder = lease.owner, holder != owner, lease.expiresAt > now { return nil }
        let epoch = (leases[id]?.epoch ?? 0) + 1
        leases[id] = Lease(owner: owner, epoch: epoch, expiresAt: now.advanced(by: .milliseconds(ttlMs)))
        return epoch
    }

    func renewLease(_ id: String, owner: String, epoch: Int64, ttlMs: Int64) async throws -> Bool {
        calls.append("renew \(id)")
        guard leases[id]?.owner == owner, leases[id]?.epoch == epoch else { return false }
        leases[id]?.expiresAt = clock.now.advanced(by: .milliseconds(ttlMs))
        return true
    }

    func releaseLease(_ id: String, owner: String, epoch: Int64) async throws {
        calls.append("release \(id)")
        if leases[id]?.owner == owner { leases[id]?.owner = nil }
    }

    func fence(topic: String, partition: Int, group: String, epoch: Int64) async throws { calls.append("fence \(partition)@\(epoch)") }

    func owner(_ id: String) -> String? { leases[id]?.owner }
}

@Suite("Group coordinator on a manual clock")
struct GroupCoordinatorClockTests {
    @Test func roundsEveryThirdOfTheTTLAndAnExpiredLeaseIsTakenOver() async throws {
        let store = SQLiteStore(location: .memory)
        try await store.open()
        try await store.putTopicConfig(TopicConfig(topic: "leased", partitions: 2))
        var settings = BrokerSettings()
        settings.replicaID = "a"
        settings.leaseTTLMs = 3_000
        let broker = Broker(store: store, settings: settings)
        let clock = ManualClock()
        let start = clock.now
        let coordination = FakeCoordination(clock: clock)
        // Replica "b" died holding partition 1; its lease runs until t = 3 s.
        await coordination.hold("leased:1:g", owner: "b", epoch: 4, ttlMs: 3_000)
        let dispatcher = GroupDispatcher(topic: "leased", group: "g", serial: 1, broker: broker)
        dispatcher.localMembers.store(1, ordering: .relaxed)
        let coordinator = GroupCoordinator(dispatcher: dispatcher, group: "g", coordination: coordination, broker: broker)
        func roundsDone(until ms: Int64) async {
            await clock.waitForSleepers { $0.contains(start.advanced(by: .milliseconds(ms))) }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await dispatcher.run(clock: clock) }
            group.addTask { await coordinator.run(clock: clock) }
            await roundsDone(until: 1_000)
            #expect(await coordination.owner("leased:0:g") == "a")
            #expect(await coordination.owner("leased:1:g") == "b")
            #expect(await coordination.calls == ["heartbeat", "take leased:0:g", "fence 0@1", "take leased:1:g"])

            clock.advance(by: .milliseconds(1_000))
            await roundsDone(until: 2_000)
            #expect(await coordination.calls.suffix(3) == ["heartbeat", "renew leased:0:g", "take leased:1:g"])
            #expect(await coordination.owner("leased:1:g") == "b", "not expired yet")

            clock.advance(by: .milliseconds(999))
            #expect(clock.sleepingUntil.contains(start.advanced(by: .milliseconds(2_000))), "no round before its time")
            clock.advance(by: .milliseconds(1))
            await roundsDone(until: 3_000)
            #expect(await coordination.owner("leased:1:g") == "b", "at 2 s the lease still has a second to run")

            clock.advance(by: .milliseconds(1_000))
            await roundsDone(until: 4_000)
            #expect(await coordination.owner("leased:1:g") == "a", "expired at 3 s: taken over")
            #expect(await coordination.calls.suffix(2) == ["take leased:1:g", "fence 1@5"])

            await coordinator.stop()
            #expect(await coordination.calls.suffix(3) == ["release leased:0:g", "release leased:1:g", "leave"])
            #expect(await coordination.owner("leased:0:g") == nil)
            await dispatcher.stop()
        }
        let owned = await dispatcher.snapshot()
        #expect(owned.isEmpty, "the dispatcher has ended")
        await store.close()
    }
}
