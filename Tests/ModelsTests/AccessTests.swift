import Models
import Testing

@Suite("Access: patterns, permissions, topic ACLs, AUTH frames")
struct AccessTests {
    func pattern(_ text: String) throws -> NamePattern { try NamePattern(text) }

    @Test func exactPatternMatchesOnlyThatName() throws {
        let p = try pattern("orders.created")
        #expect(p.matches("orders.created"))
        #expect(!p.matches("orders.created.eu"))
        #expect(!p.matches("orders"))
        #expect(!p.matches("orders.updated"))
    }

    @Test func starMatchesExactlyOneSegment() throws {
        let p = try pattern("orders.*")
        #expect(p.matches("orders.created"))
        #expect(!p.matches("orders"))
        #expect(!p.matches("orders.created.eu"))
        let middle = try pattern("orders.*.eu")
        #expect(middle.matches("orders.created.eu"))
        #expect(!middle.matches("orders.created.us"))
    }

    @Test func greaterThanMatchesOneOrMoreTrailingSegments() throws {
        let p = try pattern("orders.>")
        #expect(p.matches("orders.created"))
        #expect(p.matches("orders.created.eu.1"))
        #expect(!p.matches("orders"))
        #expect(!p.matches("payments.created"))
        let all = try pattern(">")
        #expect(all.matches("x"))
        #expect(all.matches("a.b.c"))
    }

    @Test(arguments: ["", "orders.", ".orders", "orders..x", "orders.>.x", "ord*", "orders.cre>", "orders.$"])
    func badPatternsAreRefused(_ text: String) {
        #expect(throws: RequestError.self) { try NamePattern(text) }
    }

    @Test func permissionsWithoutListsAllowNoTopicsButAnyGroup() throws {
        let none = try Permissions.decode(.object([]), what: "entry")
        #expect(!none.mayPublish("a"))
        #expect(!none.maySubscribe("a"))
        #expect(none.mayJoin("any-group"))
        #expect(!none.admin)
        #expect(none.rate == nil)
    }

    @Test func permissionsReadEveryField() throws {
        let value = JSONValue.object([
            ("publish", .array([.string("orders.>")])), ("subscribe", .array([.string("orders.*"), .string("payments")])),
            ("groups", .array([.string("billing"), .string("billing.>")])), ("admin", .bool(true)), ("rate", .int(500)),
        ])
        let p = try Permissions.decode(value, what: "entry")
        #expect(p.mayPublish("orders.a.b"))
        #expect(!p.mayPublish("payments"))
        #expect(p.maySubscribe("payments"))
        #expect(!p.maySubscribe("orders.a.b"))
        #expect(p.mayJoin("billing"))
        #expect(p.mayJoin("billing.eu"))
        #expect(!p.mayJoin("shipping"))
        #expect(p.admin)
        #expect(p.rate == 500)
    }

    @Test func permissionErrorsNameTheFieldAndPattern() {
        func message(_ value: JSONValue) -> String? {
            do {
                _ = try Permissions.decode(value, what: "tokens[0]")
                return nil
            } catch {
                return error.message
            }
        }
        #expect(message(.object([("publish", .array([.string("a.>.b")]))]))?.contains("tokens[0] publish") == true)
        #expect(message(.object([("publish", .string("a"))]))?.contains("array") == true)
        #expect(message(.object([("rate", .int(0))]))?.contains("rate") == true)
        #expect(message(.object([("pubilsh", .array([]))]))?.contains("unknown field 'pubilsh'") == true)
    }

    @Test func aclDenyWinsAndAllowAdmitsOnlyThoseListed() {
        let list = AccessList(allow: ["alice", "bob"], deny: ["bob"])
        #expect(list.permits("alice"))
        #expect(!list.permits("bob"))
        #expect(!list.permits("carol"))
        let denyOnly = AccessList(deny: ["mallory"])
        #expect(denyOnly.permits("carol"))
        #expect(!denyOnly.permits("mallory"))
        let acl = TopicACL(publish: list)
        #expect(acl.permits("carol", publishing: false))
        #expect(!acl.permits("carol", publishing: true))
    }

    @Test func topicConfigCarriesItsACLBothWays() throws {
        var parser = JSONParser(Array(#"{"topic":"orders","acl":{"publish":{"allow":["alice"],"deny":["bob"]},"subscribe":{"deny":["eve"]}}}"#.utf8))
        let config = try TopicConfig.decode(try parser.parseDocument())
        #expect(config.acl == TopicACL(publish: AccessList(allow: ["alice"], deny: ["bob"]), subscribe: AccessList(deny: ["eve"])))
        #expect(try TopicConfig.decode(config.jsonValue) == config)
    }

    @Test(arguments: [
        #"{"topic":"t","acl":[]}"#, #"{"topic":"t","acl":{"produce":{}}}"#, #"{"topic":"t","acl":{"publish":{"allow":"alice"}}}"#,
        #"{"topic":"t","acl":{"publish":{"deny":[""]}}}"#, #"{"topic":"t","acl":{"publish":{"allow":[],"except":[]}}}"#,
    ])
    func badACLsAreRefused(_ text: String) throws {
        var parser = JSONParser(Array(text.utf8))
        let value = try parser.parseDocument()
        #expect(throws: RequestError.self) { try TopicConfig.decode(value) }
    }

    @Test func authFrameDecodes() throws {
        #expect(try ClientFrame.decode(Array(#"{"type":"AUTH","token":"abc","rid":"r1"}"#.utf8)) == .auth(token: "abc", rid: "r1"))
        for bad in [#"{"type":"AUTH","rid":"r1"}"#, #"{"type":"AUTH","token":"","rid":"r1"}"#] {
            #expect(throws: RequestError.badRequest("AUTH needs a token", rid: "r1")) { try ClientFrame.decode(Array(bad.utf8)) }
        }
        #expect(throws: RequestError.badRequest("AUTH token must be a string, not a number", rid: "r1")) {
            try ClientFrame.decode(Array(#"{"type":"AUTH","token":5,"rid":"r1"}"#.utf8))
        }
    }

    @Test func authedAndRateLimitedFramesEncode() {
        #expect(
            String(decoding: ServerFrame.authed(principal: "alice", expiresMs: 1_700_000_000_000, rid: "r1"), as: UTF8.self)
                == #"{"type":"AUTHED","principal":"alice","expires":1700000000000,"rid":"r1"}"#)
        #expect(
            String(decoding: ServerFrame.authed(principal: "alice", expiresMs: nil, rid: nil), as: UTF8.self)
                == #"{"type":"AUTHED","principal":"alice","expires":null}"#)
        let error = RequestError(.rateLimited, "slow down", rid: "p1", retryAfterMs: 250)
        #expect(
            String(decoding: ServerFrame.error(error), as: UTF8.self)
                == #"{"type":"ERROR","code":"rate_limited","message":"slow down","retry_after_ms":250,"rid":"p1"}"#)
    }
}
