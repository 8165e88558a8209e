import Models
import Synchronization

/// Fans newly stored events out to per-topic watchers (the in-process change feed).
final class ChangeFeed: Sendable {
    private struct Watchers {
        var nextID = 0
        var byTopic: [String: [Int: AsyncStream<[Event]>.Continuation]] = [:]
    }

    private let watchers = Mutex(Watchers())

    func stream(topic: String) -> AsyncStream<[Event]> {
        let (stream, continuation) = AsyncStream<[Event]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let id = watchers.withLock { state -> Int in
            state.nextID += 1
            state.byTopic[topic, default: [:]][state.nextID] = continuation
            return state.nextID
        }
        // An empty batch first: the feed is open, anything earlier must be found by offset.
        continuation.yield([])
        continuation.onTermination = { [weak self] _ in
            self?.watchers.withLock { state in
                state.byTopic[topic]?[id] = nil
                if state.byTopic[topic]?.isEmpty == true { state.byTopic[topic] = nil }
            }
        }
        return stream
    }

    /// Publishes events (already committed) to the watchers of their topics.
    func publish(_ events: [Event]) {
        guard !events.isEmpty else { return }
        var byTopic: [String: [Event]] = [:]
        for event in events { byTopic[event.topic, default: []].append(event) }
        let targets = watchers.withLock { state in
            byTopic.compactMap { topic, events in state.byTopic[topic].map { (Array($0.values), events) } }
        }
        for (continuations, events) in targets {
            for continuation in continuations { continuation.yield(events) }
        }
    }

    /// Tells every watcher to rescan by offset (the source reopened and may have missed events).
    func rescanAll() {
        let all = watchers.withLock { $0.byTopic.values.flatMap { $0.values } }
        for continuation in all { continuation.yield([]) }
    }

    func finish() {
        let all = watchers.withLock { state -> [AsyncStream<[Event]>.Continuation] in
            defer { state.byTopic = [:] }
            return state.byTopic.values.flatMap { $0.values }
        }
        for continuation in all { continuation.finish() }
    }
}
