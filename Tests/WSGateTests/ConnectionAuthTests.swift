import Models
import Testing

@testable import WSGate

@Suite("A WebSocket connection's authentication state")
struct ConnectionAuthTests {
    let alice = Principal(name: "alice", permissions: Permissions(), expiresMs: 9_000, credential: "h1")
    let publish = ClientFrame.publish(PublishRequest(topic: "t", payload: RawJSON(trusted: Array("1".utf8)), rid: "p1"))
    let subscribe = ClientFrame.subscribe(SubscribeRequest(topic: "t", group: nil, rid: "s1"))

    @Test func withoutAuthenticationEveryFrameGoesThroughAndAuthIsAnsweredAnonymous() {
        var auth = ConnectionAuth(enabled: false, principal: nil, closesAt: nil, now: 0, timeoutMs: 5_000)
        #expect(auth.initialTimer == nil)
        #expect(auth.received(publish) == [.deliver(publish)])
        #expect(auth.received(.auth(token: "x", rid: "a")) == [.reply(ServerFrame.authed(principal: "anonymous", expiresMs: nil, rid: "a"))])
    }

    @Test func unauthenticatedFramesAreRefusedAndTheDeadlineCloses() {
        var auth = ConnectionAuth(enabled: true, principal: nil, closesAt: nil, now: 1_000, timeoutMs: 5_000)
        #expect(auth.initialTimer == 6_000)
        #expect(auth.received(publish) == [.refuse(ConnectionAuth.unauthorized("p1"), bad: true)])
        #expect(auth.timerFired(now: 5_999) == [.arm(at: 6_000)])
        #expect(auth.timerFired(now: 6_000) == [.close(code: 1008, reason: "authentication timeout")])
    }

    @Test func framesWaitForTheFirstCredentialAndFollowItInOrder() {
        var auth = ConnectionAuth(enabled: true, principal: nil, closesAt: nil, now: 0, timeoutMs: 5_000)
        #expect(auth.received(.auth(token: "tok", rid: "a1")) == [.verify(token: "tok", rid: "a1")])
        #expect(auth.received(subscribe) == [])
        #expect(auth.received(publish) == [])
        let actions = auth.verified(.success((alice, closesAt: 9_000)), rid: "a1")
        #expect(
            actions == [
                .become(alice, previous: nil), .reply(ServerFrame.authed(principal: "alice", expiresMs: 9_000, rid: "a1")), .arm(at: 9_000),
                .deliver(subscribe), .deliver(publish),
            ])
        #expect(auth.principal == alice)
        #expect(auth.received(publish) == [.deliver(publish)])
    }

    @Test func aRefusedCredentialRefusesWhatWaitedAndLetsTheClientTryAgain() {
        var auth = ConnectionAuth(enabled: true, principal: nil, closesAt: nil, now: 0, timeoutMs: 5_000)
        _ = auth.received(.auth(token: "bad", rid: "a1"))
        _ = auth.received(publish)
        let refused = RequestError(.unauthorized, "unknown token")
        #expect(
            auth.verified(.failure(refused), rid: "a1") == [
                .refuse(RequestError(.unauthorized, "unknown token", rid: "a1"), bad: true), .refuse(ConnectionAuth.unauthorized("p1"), bad: false),
            ])
        #expect(auth.principal == nil)
        #expect(auth.received(.auth(token: "good", rid: "a2")) == [.verify(token: "good", rid: "a2")])
        #expect(auth.verified(.success((alice, closesAt: nil)), rid: "a2").first == .become(alice, previous: nil))
    }

    @Test func anExpiringCredentialClosesUnlessRefreshed() {
        var auth = ConnectionAuth(enabled: true, principal: alice, closesAt: 9_000, now: 0, timeoutMs: 5_000)
        #expect(auth.initialTimer == 9_000)
        #expect(auth.received(publish) == [.deliver(publish)])
        // A refresh in time moves the deadline; frames keep flowing meanwhile.
        #expect(auth.received(.auth(token: "fresh", rid: "a9")) == [.verify(token: "fresh", rid: "a9")])
        #expect(auth.received(publish) == [.deliver(publish)])
        var fresher = alice
        fresher.expiresMs = 20_000
        #expect(auth.verified(.success((fresher, closesAt: 20_000)), rid: "a9").contains(.arm(at: 20_000)))
        #expect(auth.timerFired(now: 9_000) == [.arm(at: 20_000)])
        #expect(auth.timerFired(now: 20_000) == [.close(code: 1008, reason: "token expired")])
    }

    @Test func aFailedRefreshKeepsTheCurrentCredential() {
        var auth = ConnectionAuth(enabled: true, principal: alice, closesAt: 9_000, now: 0, timeoutMs: 5_000)
        _ = auth.received(.auth(token: "forged", rid: "a2"))
        #expect(auth.verified(.failure(RequestError(.unauthorized, "bad signature")), rid: "a2").count == 1)
        #expect(auth.principal == alice)
        #expect(auth.timerFired(now: 9_000) == [.close(code: 1008, reason: "token expired")])
    }

    @Test func aRefreshMayNotChangeWhoTheConnectionIs() {
        var auth = ConnectionAuth(enabled: true, principal: alice, closesAt: 9_000, now: 0, timeoutMs: 5_000)
        _ = auth.received(.auth(token: "bob's", rid: "a3"))
        let bob = Principal(name: "bob", permissions: Permissions(), expiresMs: 99_000)
        let actions = auth.verified(.success((bob, closesAt: 99_000)), rid: "a3")
        guard case .refuse(let error, bad: true) = actions.first, actions.count == 1 else {
            Issue.record("a refresh naming another principal was taken: \(actions)")
            return
        }
        #expect(error.code == .unauthorized)
        #expect(error.rid == "a3")
        #expect(auth.principal == alice)
    }

    @Test func heldFramesAreBounded() {
        var auth = ConnectionAuth(enabled: true, principal: nil, closesAt: nil, now: 0, timeoutMs: 5_000)
        _ = auth.received(.auth(token: "tok", rid: "a1"))
        for _ in 0..<ConnectionAuth.maxHeld { #expect(auth.received(publish) == []) }
        #expect(auth.received(publish) == [.refuse(ConnectionAuth.unauthorized("p1"), bad: true)])
    }
}
