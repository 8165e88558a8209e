import Models
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import StreamBroker

/// Dispatchers run on the event loop of the connection that made them.
@Suite("Event-loop executor")
struct EventLoopExecutorTests {
    @Test func aTaskPreferringALoopRunsThereAlsoAfterAResumeFromAnotherThread() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let other = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let executor = EventLoopExecutor(loop)
        let onLoop = await Task(executorPreference: executor) {
            var seen = [loop.inEventLoop]
            // Resumed from another thread, as the store's threads resume a dispatcher.
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                other.next().execute { done.resume() }
            }
            seen.append(loop.inEventLoop)
            try? await Task.sleep(for: .milliseconds(1))
            seen.append(loop.inEventLoop)
            return seen
        }.value
        #expect(onLoop == [true, true, true])
        #expect(EventLoopExecutor.current == nil, "a test's thread runs no event loop")
        #expect(try await loop.submit { EventLoopExecutor.current?.eventLoop === loop }.get())
        try? await group.shutdownGracefully()
        try? await other.shutdownGracefully()
    }

    @Test func aGroupSubscribedOnALoopQueuesItsFramesFromThatLoop() async throws {
        let store = SQLiteStore(location: .memory)
        let broker = Broker(store: store)
        try await broker.openStore()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loop = group.next()
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try? await broker.run() }
            let session = broker.connect()
            let sink = RecordingSink(loop: loop)
            session.connection.attach(sink)
            loop.execute { session.handle(.subscribe(SubscribeRequest(topic: "t", group: "g", from: .earliest, rid: "s"))) }
            _ = try? await DirectPublisher(store: store).publish(topic: "t", json: "1")
            let frames = await sink.frames(from: session.connection, until: #""type":"MESSAGE""#)
            #expect(frames.contains { $0.contains(#""type":"SUBSCRIBED""#) })
            #expect(frames.contains { $0.contains(#""type":"MESSAGE""#) && $0.contains(#""offset":1"#) })
            #expect(sink.calls.withLock { $0 } > 0)
            #expect(sink.offLoop.withLock { $0 } == 0, "every frame was queued on the subscriber's loop")
            session.close()
            tasks.cancelAll()
        }
        try await group.shutdownGracefully()
    }
}

/// Counts the announcements of output, and those made off `loop`.
private final class RecordingSink: OutboundSink {
    let loop: any EventLoop
    let calls = Mutex(0)
    let offLoop = Mutex(0)
    let ready = Mutex<CheckedContinuation<Void, Never>?>(nil)

    init(loop: any EventLoop) { self.loop = loop }

    func outboundReady() {
        let onLoop = loop.inEventLoop
        calls.withLock { $0 += 1 }
        if !onLoop { offLoop.withLock { $0 += 1 } }
        ready.withLock { waiter in
            waiter?.resume()
            waiter = nil
        }
    }

    /// Takes the connection's frames as they are announced until one contains `marker`.
    func frames(from connection: ClientConnection, until marker: String) async -> [String] {
        var seen: [String] = []
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            switch connection.take(maxBytes: 1 << 20) {
            case .frames(let frames):
                connection.didWrite(frames.count)
                seen += frames.map { String(decoding: $0.bytes, as: UTF8.self) }
                if seen.contains(where: { $0.contains(marker) }) { return seen }
            case .close:
                return seen
            case .idle:
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        return seen
    }
}
