import Logging
import Models
import Synchronization
import Testing

@testable import StreamBroker

@Suite("Access control: rate buckets, refusal throttle, publish and subscribe checks")
struct AccessControlTests {
    @Test func bucketAllowsABurstOfRateThenRefillsOverTime() {
        var bucket = TokenBucket(rate: 4, nowMs: 0)
        for _ in 0..<4 { #expect(bucket.take(nowMs: 0) == nil) }
        #expect(bucket.take(nowMs: 0) == 250)
        #expect(bucket.take(nowMs: 100) == 150)
        #expect(bucket.take(nowMs: 250) == nil)
        #expect(bucket.take(nowMs: 250) == 250)
        // A long pause saves up no more than the burst.
        for _ in 0..<4 { #expect(bucket.take(nowMs: 60_000) == nil) }
        #expect(bucket.take(nowMs: 60_000) != nil)
    }

    @Test func throttleRecordsAFewASecondPerKeyAndCountsTheRest() {
        var throttle = RefusalThrottle(perSecond: 5)
        var recorded = 0
        for _ in 0..<200 where throttle.admit("p:eve", nowMs: 1_000) != nil { recorded += 1 }
        #expect(recorded == 5)
        // Another key has its own budget.
        #expect(throttle.admit("a:10.0.0.1", nowMs: 1_500) == 0)
        // The next second's first record says how many were left out.
        #expect(throttle.admit("p:eve", nowMs: 2_000) == 195)
        #expect(throttle.admit("p:eve", nowMs: 2_001) == 0)
    }

    /// A manual clock for the rate buckets.
    final class ManualClock: Sendable {
        let ms = Atomic<Int64>(0)
    }

    func broker(clock: ManualClock? = nil) -> Broker {
        let store = SQLiteStore(location: .memory, durability: .normal, logger: Logger(label: "test.store"))
        var access = AccessControl()
        if let clock { access = AccessControl(nowMs: { clock.ms.load(ordering: .relaxed) }) }
        return Broker(store: store, access: access, logger: Logger(label: "test.broker"))
    }

    func principal(publish: [String] = [], subscribe: [String] = [], groups: [String]? = nil, rate: Int? = nil) throws -> Principal {
        Principal(
            name: "alice",
            permissions: try Permissions(publish: publish, subscribe: subscribe, groups: groups, admin: false, rate: rate, what: "test"))
    }

    @Test func reservedHeaderNamesAreRecognisedInAnyCase() {
        for name in ["x-bus-principal", "X-BUS-", "X-Bus-Anything"] { #expect(Broker.isReservedHeader(name)) }
        for name in ["x-bus", "x-busy", "xx-bus-", "", "x_bus_principal", "x-bus\r"] { #expect(!Broker.isReservedHeader(name)) }
    }

    @Test func reservedHeadersAreRefusedInEveryMode() throws {
        let broker = broker()
        let request = PublishRequest(
            topic: "t", headers: Headers([("X-Bus-Principal", "root")]), payload: RawJSON(trusted: Array("1".utf8)), rid: "r")
        #expect(throws: RequestError.self) { try broker.authorizePublish(request, by: Principal?.none) }
        #expect(throws: RequestError.self) { try broker.authorizePublish(request, by: try principal(publish: [">"])) }
        let fine = PublishRequest(topic: "t", headers: Headers([("x-busy", "1")]), payload: RawJSON(trusted: Array("1".utf8)))
        try broker.authorizePublish(fine, by: Principal?.none)
    }

    @Test func publishNeedsAMatchingPatternAndRespectsTheRate() throws {
        let clock = ManualClock()
        let broker = broker(clock: clock)
        let alice = try principal(publish: ["orders.*"], rate: 2)
        let request = PublishRequest(topic: "orders.created", payload: RawJSON(trusted: Array("1".utf8)), rid: "r1")
        do throws(RequestError) {
            try broker.authorizePublish(PublishRequest(topic: "orders.created.eu", payload: request.payload, rid: "r0"), by: alice)
            Issue.record("a topic outside the patterns was allowed")
        } catch {
            #expect(error.code == .forbidden)
            #expect(error.rid == "r0")
            #expect(error.message.contains("may not publish to topic 'orders.created.eu'"))
        }
        try broker.authorizePublish(request, by: alice)
        try broker.authorizePublish(request, by: alice)
        do throws(RequestError) {
            try broker.authorizePublish(request, by: alice)
            Issue.record("a publish over the rate was allowed")
        } catch {
            #expect(error.code == .rateLimited)
            #expect(error.retryAfterMs == 500)
        }
        clock.ms.store(500, ordering: .relaxed)
        try broker.authorizePublish(request, by: alice)
    }

    @Test func subscribeNeedsATopicPatternAndAnAllowedGroup() throws {
        let broker = broker()
        let alice = try principal(subscribe: ["orders.>"], groups: ["billing"])
        try broker.authorizeSubscribe(topic: "orders.a", group: "billing", by: alice, rid: nil)
        try broker.authorizeSubscribe(topic: "orders.a", group: nil, by: alice, rid: nil)
        #expect(throws: RequestError.self) { try broker.authorizeSubscribe(topic: "orders.a", group: "shipping", by: alice, rid: nil) }
        #expect(throws: RequestError.self) { try broker.authorizeSubscribe(topic: "payments", group: nil, by: alice, rid: nil) }
        try broker.authorizeSubscribe(topic: "anything", group: "any", by: Principal?.none, rid: nil)
    }

    @Test func systemTopicsAreTheBrokersAndGroupResetsNeedAdmin() throws {
        let broker = broker()
        let everything = try principal(publish: [">"], subscribe: [">"])
        let audit = PublishRequest(topic: Broker.auditTopic, payload: RawJSON(trusted: Array("1".utf8)))
        #expect(throws: RequestError.self) { try broker.authorizePublish(audit, by: everything) }
        try broker.authorizePublish(audit, by: Principal?.none)
        #expect(throws: RequestError.self) { try broker.authorizeSubscribe(topic: "t", group: "g", reset: true, by: everything, rid: nil) }
        try broker.authorizeSubscribe(topic: "t", group: nil, reset: true, by: everything, rid: nil)
        var root = everything
        root.permissions.admin = true
        try broker.authorizeSubscribe(topic: "t", group: "g", reset: true, by: root, rid: nil)
    }

    @Test func topicACLDenyWinsOverPatterns() throws {
        let broker = broker()
        let config = TopicConfig(topic: "orders", acl: TopicACL(publish: AccessList(deny: ["alice"]), subscribe: AccessList(allow: ["bob"])))
        #expect(throws: RequestError.self) { try broker.checkACL(config, principal: "alice", publishing: true, rid: nil) }
        try broker.checkACL(config, principal: "bob", publishing: true, rid: nil)
        #expect(throws: RequestError.self) { try broker.checkACL(config, principal: "alice", publishing: false, rid: nil) }
        try broker.checkACL(config, principal: "bob", publishing: false, rid: nil)
        try broker.checkACL(config, principal: nil, publishing: true, rid: nil)
    }

    @Test func adminRoutesNeedAdmin() throws {
        let broker = broker()
        #expect(throws: RequestError.self) { try broker.authorizeAdmin(try principal(publish: [">"]), action: "create a topic") }
        var root = try principal()
        root.permissions.admin = true
        try broker.authorizeAdmin(root, action: "create a topic")
        try broker.authorizeAdmin(Principal?.none, action: "create a topic")
    }
}
