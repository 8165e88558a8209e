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
/// The gateway drains it by push: it ``attach(_:)``es a sink that is told when output is
/// ready and then calls ``take(maxBytes:)`` until it returns `.idle`; ``didWrite(_:)`` reports
/// frames that left for the socket, so that ``pending`` counts frames queued or still on their
/// way.
public final class ClientConnection: Sendable {
    /// A connection's number, unique in this process.
    public typealias ID = UInt64

    /// What the writer does next: write these frames, close, or wait for the sink.
    public enum Output: Sendable {
        case frames([OutboundFrame])
        case close(code: UInt16, reason: String)
        /// Nothing to write: the sink is told again when there is.
        case idle
    }

    private struct State {
        var queued: Deque<OutboundFrame> = []
        var writing = 0
        var sink: (any OutboundSink)?
        /// The sink was told and has not yet found the queue empty.
        var signalled = false
        var closing: (code: UInt16, reason: String)?
        var drainWatchers: [@Sendable () -> Void] = []
        var drainLevel = 0
    }

    public let id: ID
    private let state = Mutex(State())

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
        let (sink, pending) = state.withLock { state -> ((any OutboundSink)?, Int) in
            guard state.closing == nil else { return (nil, 0) }
            state.queued.append(frame)
            var sink: (any OutboundSink)?
            if !state.signalled, let attached = state.sink {
                state.signalled = true
                sink = attached
            }
            return (sink, state.queued.count + state.writing)
        }
        sink?.outboundReady()
        return pending
    }

    /// Asks the gateway to close the socket with `code` after the frames already queued (or
    /// at once, dropping them, with `discardQueued` — for a subscriber that stopped reading).
    public func close(code: UInt16, reason: String, discardQueued: Bool = false) {
        let sink = state.withLock { state -> (any OutboundSink)? in
            guard state.closing == nil else { return nil }
            state.closing = (code, reason)
            if discardQueued { state.queued.removeAll() }
            // A close request is always announced, even to a sink that is still busy (it may be
            // waiting for a socket that does not drain, and must start its close watchdog).
            state.signalled = state.sink != nil
            return state.sink
        }
        sink?.outboundReady()
    }

    public var isClosing: Bool { state.withLock { $0.closing != nil } }

    /// Installs the writer: `sink` is told whenever output is ready (at once if some already
    /// is).
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

    /// For the writer: queued frames, at least one and up to `maxBytes` of them, now
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
