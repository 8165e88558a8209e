import Synchronization

/// A single-consumer queue of inputs that the consumer takes in batches: senders append under a
/// lock and wake the consumer only when it waits, and the consumer takes everything queued at
/// once, so that a busy dispatcher handles a burst of acks and appended events with one wake-up
/// and one pump (instead of one `AsyncStream` hand-over per input).
final class Mailbox<Element: Sendable>: Sendable {
    /// Whether an element was accepted, and the consumer to wake with what was queued.
    private typealias Wake = (accepted: Bool, waiter: CheckedContinuation<[Element]?, Never>?, batch: [Element])

    private struct State {
        var queued: [Element] = []
        var waiter: CheckedContinuation<[Element]?, Never>?
        var finished = false

        /// After queuing: the waiting consumer, if any, with everything queued for it.
        mutating func wake() -> Wake {
            guard let waiting = waiter else { return (true, nil, []) }
            waiter = nil
            return (true, waiting, takeQueued())
        }

        mutating func takeQueued() -> [Element] {
            defer { queued.removeAll(keepingCapacity: true) }
            return queued
        }
    }

    private let state = Mutex(State())

    /// Queues an element; false (and nothing queued) once the mailbox is finished.
    @discardableResult
    func send(_ element: Element) -> Bool {
        let (accepted, waiter, batch) = state.withLock { state -> Wake in
            guard !state.finished else { return (false, nil, []) }
            state.queued.append(element)
            return state.wake()
        }
        waiter?.resume(returning: batch)
        return accepted
    }

    /// Queues an element without waking a waiting consumer (it takes the element with the
    /// next one that wakes it), unless `limit` elements are queued; false once finished.
    @discardableResult
    func sendQuietly(_ element: Element, wakeAt limit: Int) -> Bool {
        let (accepted, waiter, batch) = state.withLock { state -> Wake in
            guard !state.finished else { return (false, nil, []) }
            state.queued.append(element)
            guard state.queued.count >= limit else { return (true, nil, []) }
            return state.wake()
        }
        waiter?.resume(returning: batch)
        return accepted
    }

    /// Queues an element unless `limit` elements are queued already (a consumer that fell far
    /// behind); false, and nothing queued, when it was not.
    func send(_ element: Element, unlessQueued limit: Int) -> Bool {
        let (accepted, waiter, batch) = state.withLock { state -> Wake in
            guard !state.finished, state.queued.count < limit else { return (false, nil, []) }
            state.queued.append(element)
            return state.wake()
        }
        waiter?.resume(returning: batch)
        return accepted
    }

    /// Everything queued, in order, waiting for at least one element; nil once finished and empty.
    ///
    /// - Important: one consumer only (a second waiter would replace the first).
    func next() async -> [Element]? {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> [Element]?? in
                if !state.queued.isEmpty {
                    defer { state.queued.removeAll(keepingCapacity: true) }
                    return .some(state.queued)
                }
                if state.finished { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Everything queued, in order, without waiting (maybe nothing); nil once finished and empty.
    func poll() -> [Element]? {
        state.withLock { state -> [Element]? in
            if state.queued.isEmpty { return state.finished ? nil : [] }
            defer { state.queued.removeAll(keepingCapacity: true) }
            return state.queued
        }
    }

    /// Finishes the mailbox if nothing is queued (a waiting consumer gets nil); false, and
    /// nothing changed, if something is.
    func finishIfEmpty() -> Bool {
        let (finished, waiter) = state.withLock { state -> (Bool, CheckedContinuation<[Element]?, Never>?) in
            guard state.queued.isEmpty else { return (false, nil) }
            state.finished = true
            defer { state.waiter = nil }
            return (true, state.waiter)
        }
        waiter?.resume(returning: nil)
        return finished
    }

    /// Whether the consumer waits for an element (for tests).
    var isWaiting: Bool { state.withLock { $0.waiter != nil } }

    /// Accepts nothing more; returns what was queued and not taken (a waiting consumer gets nil).
    func finish() -> [Element] {
        let (left, waiter) = state.withLock { state -> ([Element], CheckedContinuation<[Element]?, Never>?) in
            state.finished = true
            defer {
                state.queued = []
                state.waiter = nil
            }
            return (state.queued, state.waiter)
        }
        waiter?.resume(returning: nil)
        return left
    }
}
