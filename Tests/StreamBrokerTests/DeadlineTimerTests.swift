import Synchronization
import Testing

@testable import StreamBroker

/// A counter that escaping closures can share.
final class Counter: Sendable {
    private let atomic = Atomic<Int>(0)
    func increment() { atomic.add(1, ordering: .relaxed) }
    var value: Int { atomic.load(ordering: .relaxed) }
}

@Suite("Timer and latch")
struct DeadlineTimerTests {
    @Test func firesOnceAtTheArmedDeadlineAndArmingReplaces() async {
        let clock = ManualClock()
        let timer = DeadlineTimer(clock: clock)
        let fired = Counter()
        let (ticks, tick) = AsyncStream<Void>.makeStream()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await timer.run {
                    fired.increment()
                    tick.yield()
                }
            }
            var iterator = ticks.makeAsyncIterator()
            let start = clock.now
            timer.arm(at: start.advanced(by: .milliseconds(30)))
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(30))] }
            // An earlier deadline replaces the later one.
            timer.arm(at: start.advanced(by: .milliseconds(20)))
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(20))] }
            clock.advance(by: .milliseconds(19))
            #expect(fired.value == 0)
            clock.advance(by: .milliseconds(1))
            await iterator.next()
            #expect(fired.value == 1)
            // The replaced deadline never fires; a new one does.
            clock.advance(by: .milliseconds(20))
            timer.arm(at: start.advanced(by: .milliseconds(100)))
            await clock.waitForSleepers { $0 == [start.advanced(by: .milliseconds(100))] }
            #expect(fired.value == 1)
            clock.advance(by: .milliseconds(60))
            await iterator.next()
            #expect(fired.value == 2)
            // A deadline already past fires at once.
            timer.arm(at: start)
            await iterator.next()
            #expect(fired.value == 3)
            timer.finish()
        }
    }

    @Test func finishingDropsThePendingDeadline() async {
        let clock = ManualClock()
        let timer = DeadlineTimer(clock: clock)
        let fired = Counter()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await timer.run { fired.increment() } }
            timer.arm(at: clock.now.advanced(by: .seconds(1)))
            await clock.waitForSleepers { !$0.isEmpty }
            timer.finish()
            await group.waitForAll()
            clock.advance(by: .seconds(2))
        }
        #expect(fired.value == 0)
        #expect(clock.sleepingUntil.isEmpty)
    }

    @Test func latchReleasesEveryWaiterOnceOpen() async {
        let latch = Latch()
        let released = Counter()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    await latch.wait()
                    released.increment()
                }
            }
            #expect(!latch.isOpen)
            latch.open()
            await group.waitForAll()
        }
        #expect(released.value == 3)
        await latch.wait()
        latch.open()
        #expect(latch.isOpen)
    }

    @Test func aCancelledWaiterReturnsAndOthersKeepWaiting() async {
        let latch = Latch()
        let waiter = Task { await latch.wait() }
        waiter.cancel()
        await waiter.value
        #expect(!latch.isOpen)
        let second = Task { await latch.wait() }
        latch.open()
        await second.value
    }
}
