import DequeModule
import Synchronization

/// Where a connection's output is announced: the gateway's side of a push-based drain.
public protocol OutboundSink: AnyObject, Sendable {
    /// Frames or a close request are ready to be taken with ``ClientConnection/take(maxBytes:)``.
    ///
    /// - Important: Called on the thread that queued the frame or asked for the close, outside
    ///   the connection's lock, never twice before ``ClientConnection/take(maxBytes:)`` returned
    ///   `.idle` (except for a close request, which is always announced). It must not block.
    func outboundReady()
}

/// One client connection's outbound side: a queue of frames (``OutboundFrame``) that the
/// gateway drains into the socket, and the close request (code and reason) when the broker
/// ends it.
///
/// The queue is bounded by its users: group subscriptions by their windows, ephemeral ones by
/// `ephemeralQueueLimit` (past it the connection is closed with 1008).
///
/// Two ways to drain it: pull (``next()``, one waiting writer) or push (``attach(_:)`` a sink
/// that is told when output is ready and then calls ``take(maxBytes:)`` until it returns
/// `.idle`). Either way ``didWrite(_:)`` reports frames that left for the socket, so that
/// ``pending`` counts frames queued or still on their way.
public final class ClientConnection: Sendable {
    /// A connection's number, unique in this process.
    public typealias ID = UInt64

    /// What the connection's writer does next: write these frames, or close.
    public enum Next: Sendable {
        case frames([OutboundFrame])
        case close(code: UInt16, reason: String)
    }

    /// What a push-based writer does next: write these frames, close, or wait for the sink.
    public enum Output: Sendable {
        case frames([OutboundFrame])
        case close(code: UInt16, reason: String)
        /// Nothing to write: the sink is told again when there is.
        case idle
    }

    private struct State {
        var queued: Deque<OutboundFrame> = []
        var writing = 0
        var waiter: CheckedContinuation<Next, Never>?
        var sink: (any OutboundSink)?
        /// The sink was told and has not yet found the queue empty.
        var signalled = false
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
        send(.bytes(frame))
    }

    /// Queues a frame; returns the number of frames pending afterwards.
    @discardableResult
    public func send(_ frame: OutboundFrame) -> Int {
        let (waiter, sink, pending) = state.withLock { state -> (CheckedContinuation<Next, Never>?, (any OutboundSink)?, Int) in
            guard state.closing == nil else { return (nil, nil, 0) }
            if let waiter = state.waiter {
                state.waiter = nil
                state.writing += 1
                return (waiter, nil, state.writing + state.queued.count)
            }
            state.queued.append(frame)
            var sink: (any OutboundSink)?
            if !state.signalled, let attached = state.sink {
                state.signalled = true
                sink = attached
            }
            return (nil, sink, state.queued.count + state.writing)
        }
        waiter?.resume(returning: .frames([frame]))
        sink?.outboundReady()
        return pending
    }

    /// Asks the gateway to close the socket with `code` after the frames already queued (or
    /// at once, dropping them, with `discardQueued` — for a subscriber that stopped reading).
    public func close(code: UInt16, reason: String, discardQueued: Bool = false) {
        let (first, waiter, sink) = state.withLock { state -> (Bool, CheckedContinuation<Next, Never>?, (any OutboundSink)?) in
            guard state.closing == nil else { return (false, nil, nil) }
            state.closing = (code, reason)
            if discardQueued { state.queued.removeAll() }
            // A close request is always announced, even to a sink that is still busy (it may be
            // waiting for a socket that does not drain, and must start its close watchdog).
            state.signalled = state.sink != nil
            guard state.queued.isEmpty, let waiter = state.waiter else { return (true, nil, state.sink) }
            state.waiter = nil
            return (true, waiter, state.sink)
        }
        guard first else { return }
        closeRequest.open()
        waiter?.resume(returning: .close(code: code, reason: reason))
        sink?.outboundReady()
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

    /// Installs the push-based writer: `sink` is told whenever output is ready (at once if
    /// some already is). Replaces the pull-based ``next()``.
    public func attach(_ sink: any OutboundSink) {
        let ready = state.withLock { state -> Bool in
            state.sink = sink
            state.signalled = !state.queued.isEmpty || state.closing != nil
            return state.signalled
        }
        if ready { sink.outboundReady() }
    }

    /// Removes the sink (the socket is gone); later frames are only queued.
    public func detach() {
        state.withLock { state in
            state.sink = nil
            state.signalled = false
        }
    }

    /// For a push-based writer: queued frames, at least one and up to `maxBytes` of them, now
    /// counted as being written; with none queued, the close request if there is one, else
    /// `.idle` (and the sink is told again when a frame is queued).
    /// Call ``didWrite(_:)`` after writing the frames.
    public func take(maxBytes: Int) -> Output {
        state.withLock { state -> Output in
            if let first = state.queued.popFirst() {
                var frames = [first]
                var bytes = first.count
                while let next = state.queued.first, bytes + next.count <= maxBytes {
                    bytes += next.count
                    frames.append(next)
                    state.queued.removeFirst()
                }
                state.writing += frames.count
                return .frames(frames)
            }
            if let closing = state.closing { return .close(code: closing.code, reason: closing.reason) }
            state.signalled = false
            return .idle
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
