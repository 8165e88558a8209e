import DequeModule
import Synchronization

/// One client connection's outbound side: a queue of encoded frames that the gateway drains
/// into the socket, and the close request (code and reason) when the broker ends it.
///
/// The queue is bounded by its users: group subscriptions by their windows, ephemeral ones by
/// `ephemeralQueueLimit` (past it the connection is closed with 1008).
public final class ClientConnection: Sendable {
    /// A connection's number, unique in this process.
    public typealias ID = UInt64

    /// What the connection's writer does next: write these frames, or close.
    public enum Next: Sendable {
        case frames([[UInt8]])
        case close(code: UInt16, reason: String)
    }

    private struct State {
        var queued: Deque<[UInt8]> = []
        var writing = 0
        var waiter: CheckedContinuation<Next, Never>?
        var closing: (code: UInt16, reason: String)?
        var drainWatchers: [@Sendable () -> Void] = []
        var drainLevel = 0
    }

    public let id: ID
    private let state = Mutex(State())
    /// Opens when ``close(code:reason:discardQueued:)`` is first called.
    private let closeRequest = Latch()

    init(id: ID) { self.id = id }

    /// Frames queued or being written.
    public var pending: Int { state.withLock { $0.queued.count + $0.writing } }

    /// Queues a frame; returns the number of frames pending afterwards.
    @discardableResult
    public func send(_ frame: [UInt8]) -> Int {
        let (waiter, pending) = state.withLock { state -> (CheckedContinuation<Next, Never>?, Int) in
            guard state.closing == nil else { return (nil, 0) }
            if let waiter = state.waiter {
                state.waiter = nil
                state.writing += 1
                return (waiter, state.writing + state.queued.count)
            }
            state.queued.append(frame)
            return (nil, state.queued.count + state.writing)
        }
        waiter?.resume(returning: .frames([frame]))
        return pending
    }

    /// Asks the gateway to close the socket with `code` after the frames already queued (or
    /// at once, dropping them, with `discardQueued` — for a subscriber that stopped reading).
    public func close(code: UInt16, reason: String, discardQueued: Bool = false) {
        let waiter = state.withLock { state -> CheckedContinuation<Next, Never>? in
            guard state.closing == nil else { return nil }
            state.closing = (code, reason)
            if discardQueued { state.queued.removeAll() }
            guard state.queued.isEmpty, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }
        closeRequest.open()
        waiter?.resume(returning: .close(code: code, reason: reason))
    }

    /// Returns once ``close(code:reason:discardQueued:)`` was called (or the task is cancelled).
    public func closeRequested() async {
        await closeRequest.wait()
    }

    public var isClosing: Bool { state.withLock { $0.closing != nil } }

    /// For the gateway's writer: the next frames to write, or the close request.
    /// Call ``didWrite(_:)`` after writing them.
    public func next() async -> Next {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Next? in
                    if !state.queued.isEmpty {
                        let frames = Array(state.queued)
                        state.queued.removeAll(keepingCapacity: true)
                        state.writing += frames.count
                        return .frames(frames)
                    }
                    if let closing = state.closing { return .close(code: closing.code, reason: closing.reason) }
                    if Task.isCancelled { return .close(code: 1001, reason: "") }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Next, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: .close(code: 1001, reason: ""))
        }
    }

    /// Reports that `count` frames left for the socket.
    public func didWrite(_ count: Int) {
        let watchers = state.withLock { state -> [@Sendable () -> Void] in
            state.writing -= count
            let pending = state.writing + state.queued.count
            guard !state.drainWatchers.isEmpty, pending <= state.drainLevel else { return [] }
            defer { state.drainWatchers.removeAll() }
            return state.drainWatchers
        }
        for watcher in watchers { watcher() }
    }

    /// Calls `watcher` once when the pending count drops to `level` or below.
    func whenDrained(to level: Int, _ watcher: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.queued.count + state.writing <= level { return true }
            state.drainLevel = level
            state.drainWatchers.append(watcher)
            return false
        }
        if now { watcher() }
    }
}
