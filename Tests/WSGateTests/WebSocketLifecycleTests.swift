import Synchronization
import Testing

@testable import StreamBroker
@testable import WSGate

/// Pings and the close handshake of an upgraded connection, as decisions.
@Suite("WebSocket lifecycle")
struct WebSocketLifecycleTests {
    @Test func pingsAndClosesAPeerThatNeverAnswers() {
        var life = WebSocketLifecycle()
        #expect(life.timerFired() == [.sendPing, .arm(.ping)])
        #expect(life.timerFired() == [.closeSocket])
    }

    @Test func anyInputKeepsThePeerAlive() {
        var life = WebSocketLifecycle()
        for _ in 0..<3 {
            #expect(life.timerFired() == [.sendPing, .arm(.ping)])
            life.heardFromPeer()
        }
    }

    @Test func closeWaitingBehindUnreadFramesIsBoundedByTheWatchdog() {
        var life = WebSocketLifecycle()
        #expect(life.closeDelayed() == [.arm(.closeWatchdog)])
        #expect(life.closeDelayed() == [], "armed once")
        #expect(life.timerFired() == [.closeSocket])
    }

    @Test func closeFrameThenTheClientsAnswer() {
        var life = WebSocketLifecycle()
        _ = life.closeDelayed()
        #expect(life.closeFrameWritten() == .arm(.closeHandshake))
        #expect(life.peerCloseReceived() == .closeSocket)
    }

    @Test func closeFrameWithoutAnAnswerTimesOut() {
        var life = WebSocketLifecycle()
        #expect(life.closeFrameWritten() == .arm(.closeHandshake))
        #expect(life.timerFired() == [.closeSocket])
    }

    @Test func clientInitiatedClose() {
        var life = WebSocketLifecycle()
        #expect(life.peerCloseReceived() == .requestClose)
        #expect(life.closeFrameWritten() == .closeSocket, "the answer leaves, then the socket closes")
    }
}

/// The push-based drain of ``ClientConnection`` that the gateway uses.
@Suite("ClientConnection push drain")
struct ClientConnectionPushTests {
    final class CountingSink: OutboundSink {
        let count = Atomic(0)
        func outboundReady() { count.add(1, ordering: .relaxed) }
        var calls: Int { count.load(ordering: .relaxed) }
    }

    func frames(_ output: ClientConnection.Output) -> [[UInt8]] {
        if case .frames(let frames) = output { return frames.map(\.bytes) }
        return []
    }

    /// A queued frame costs a word, as a plain array did: a long queue is no larger for
    /// holding MESSAGE frames too.
    @Test func aQueuedFrameIsOneWord() {
        #expect(MemoryLayout<OutboundFrame>.stride == MemoryLayout<[UInt8]>.stride)
    }

    @Test func sinkIsToldOnceUntilTheQueueIsFoundEmpty() {
        let connection = ClientConnection(id: 1)
        let sink = CountingSink()
        connection.attach(sink)
        #expect(sink.calls == 0)
        #expect(connection.send([1]) == 1)
        #expect(connection.send([2]) == 2)
        #expect(sink.calls == 1)
        #expect(frames(connection.take(maxBytes: 100)) == [[1], [2]])
        #expect(connection.pending == 2, "taken frames count until written")
        connection.send([3])
        #expect(sink.calls == 1, "still draining: no second announcement")
        #expect(frames(connection.take(maxBytes: 100)) == [[3]])
        guard case .idle = connection.take(maxBytes: 100) else {
            Issue.record("expected idle")
            return
        }
        connection.send([4])
        #expect(sink.calls == 2)
        connection.didWrite(3)
        #expect(connection.pending == 1)
    }

    @Test func attachingAnnouncesWhatIsAlreadyQueued() {
        let connection = ClientConnection(id: 1)
        connection.send([1])
        let sink = CountingSink()
        connection.attach(sink)
        #expect(sink.calls == 1)
    }

    @Test func takeStopsAtTheByteBudgetButTakesAtLeastOne() {
        let connection = ClientConnection(id: 1)
        connection.attach(CountingSink())
        let big = [UInt8](repeating: 0, count: 100)
        connection.send(big)
        connection.send(big)
        connection.send([1])
        connection.send(big)
        #expect(frames(connection.take(maxBytes: 10)).count == 1, "one frame over the budget still goes")
        #expect(frames(connection.take(maxBytes: 150)) == [big, [1]])
        #expect(frames(connection.take(maxBytes: 150)) == [big])
    }

    @Test func closeIsAlwaysAnnouncedAndComesAfterTheQueuedFrames() {
        let connection = ClientConnection(id: 1)
        let sink = CountingSink()
        connection.attach(sink)
        connection.send([1])
        connection.close(code: 1008, reason: "slow")
        #expect(sink.calls == 2, "a busy sink still hears of the close (its watchdog)")
        #expect(connection.send([2]) == 0, "nothing is queued after a close")
        #expect(frames(connection.take(maxBytes: 100)) == [[1]])
        guard case .close(let code, let reason) = connection.take(maxBytes: 100) else {
            Issue.record("expected the close")
            return
        }
        #expect(code == 1008 && reason == "slow")
    }

    @Test func discardingCloseDropsQueuedFramesButNotThoseBeingWritten() {
        let connection = ClientConnection(id: 1)
        connection.attach(CountingSink())
        connection.send([1])
        _ = connection.take(maxBytes: 100)
        connection.send([2])
        connection.close(code: 1008, reason: "slow", discardQueued: true)
        #expect(connection.pending == 1)
        let drained = Atomic(false)
        connection.whenDrained(to: 0) { drained.store(true, ordering: .relaxed) }
        let before = drained.load(ordering: .relaxed)
        #expect(!before)
        connection.didWrite(1)
        let after = drained.load(ordering: .relaxed)
        #expect(after)
    }

    @Test func detachedConnectionOnlyQueues() {
        let connection = ClientConnection(id: 1)
        let sink = CountingSink()
        connection.attach(sink)
        connection.detach()
        connection.send([1])
        #expect(sink.calls == 0)
    }
}
