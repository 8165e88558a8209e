/// The timer of a run loop: at most one deadline is armed at a time; arming another replaces
/// it, and when the armed one passes, `fire` runs once.
///
/// ``run(fire:)`` is meant to be a child task of the loop it wakes (a task group around the
/// loop), so the timer never outlives it; ``finish()`` ends it. The clock is injected, so a
/// test can drive it with a manual clock.
struct DeadlineTimer<C: Clock>: Sendable {
    let clock: C
    private let deadlines: AsyncStream<C.Instant>
    private let arming: AsyncStream<C.Instant>.Continuation

    init(clock: C) {
        self.clock = clock
        (deadlines, arming) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Arms the timer for `deadline`, replacing the deadline armed before (later or earlier).
    func arm(at deadline: C.Instant) { arming.yield(deadline) }

    /// Ends ``run(fire:)``; a pending deadline does not fire.
    func finish() { arming.finish() }

    /// Sleeps until each armed deadline and calls `fire`, until ``finish()``.
    func run(fire: @escaping @Sendable () -> Void) async {
        var iterator = deadlines.makeAsyncIterator()
        var armed = await iterator.next()
        while let deadline = armed {
            // The sleep is a child task so that arming another deadline can cancel it.
            armed = await withTaskGroup(of: Void.self) { group in
                group.addTask { [clock] in
                    guard (try? await clock.sleep(until: deadline, tolerance: nil)) != nil, !Task.isCancelled else { return }
                    fire()
                }
                let next = await iterator.next()
                group.cancelAll()
                return next
            }
        }
    }
}
