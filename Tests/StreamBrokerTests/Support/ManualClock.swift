import Synchronization

/// A clock that moves only when a test says so (after swift-async-algorithms'
/// `Tests/AsyncAlgorithmsTests/Support/ManualClock.swift`, with `Swift.Duration` steps so it
/// can stand in for `ContinuousClock`). Sleepers wake when ``advance(by:)`` passes their
/// deadline, or throw `CancellationError` when cancelled.
struct ManualClock: Clock {
    struct Instant: InstantProtocol, CustomStringConvertible {
        var offset: Duration

        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        var description: String { "\(offset)" }
    }

    private struct Sleeper {
        let deadline: Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var nextID = 0
        var sleepers: [Int: Sleeper] = [:]
        /// Tests waiting for the set of sleepers to change.
        var watchers: [CheckedContinuation<Void, Never>] = []
    }

    private final class Storage: Sendable {
        let state = Mutex(State())
    }

    private let storage = Storage()

    init() {}

    var now: Instant { storage.state.withLock { $0.now } }
    var minimumResolution: Duration { .zero }

    func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        let id = storage.state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (ready, watchers) = storage.state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                    if Task.isCancelled || deadline <= state.now { return (true, []) }
                    state.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    defer { state.watchers = [] }
                    return (false, state.watchers)
                }
                for watcher in watchers { watcher.resume() }
                if ready { Task.isCancelled ? continuation.resume(throwing: CancellationError()) : continuation.resume() }
            }
        } onCancel: {
            let (sleeper, watchers) = storage.state.withLock { state -> (Sleeper?, [CheckedContinuation<Void, Never>]) in
                defer { state.watchers = [] }
                return (state.sleepers.removeValue(forKey: id), state.watchers)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
            for watcher in watchers { watcher.resume() }
        }
    }

    /// Moves time forward and wakes every sleeper whose deadline passed.
    func advance(by duration: Duration) {
        let (due, watchers) = storage.state.withLock { state -> ([Sleeper], [CheckedContinuation<Void, Never>]) in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { state.sleepers[id] = nil }
            defer { state.watchers = [] }
            return (Array(due.values), due.isEmpty ? [] : state.watchers)
        }
        for sleeper in due { sleeper.continuation.resume() }
        for watcher in watchers { watcher.resume() }
    }

    /// The deadlines of the tasks sleeping now.
    var sleepingUntil: [Instant] { storage.state.withLock { $0.sleepers.values.map(\.deadline).sorted() } }

    /// Returns once `condition` holds for the deadlines of the sleeping tasks (a test's
    /// condition to wait for instead of a fixed sleep).
    func waitForSleepers(_ condition: @escaping @Sendable ([Instant]) -> Bool) async {
        while !condition(sleepingUntil) {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let satisfied = storage.state.withLock { state -> Bool in
                    if condition(state.sleepers.values.map(\.deadline).sorted()) { return true }
                    state.watchers.append(continuation)
                    return false
                }
                if satisfied { continuation.resume() }
            }
        }
    }
}
