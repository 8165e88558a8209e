import Models
import Synchronization

/// What a store's change feed tells the watcher of one topic (the doorbell of SPEC §4).
public enum ChangeNotice: Sendable {
    /// Newly stored events of the topic, in offset order per partition.
    case events([Event])
    /// The feed (re)opened and may have missed events: rescan by offset. The first notice of
    /// every watch, once the feed is open.
    case reopened
    /// The feed ended (the store closed); nothing follows.
    case finished
}

/// A registration with a store's change feed; ``cancel()`` ends it (idempotent).
public final class ChangeWatch: Sendable {
    private let onCancel: Mutex<(@Sendable () -> Void)?>

    init(onCancel: @escaping @Sendable () -> Void) {
        self.onCancel = Mutex(onCancel)
    }

    public func cancel() {
        let action = onCancel.withLock { action in
            defer { action = nil }
            return action
        }
        action?()
    }
}

/// Fans newly stored events out to per-topic watchers (the in-process change feed).
///
/// A watcher's handler runs on the thread that publishes (the store's writer or tail thread)
/// right after the commit, without a task hop: it must not block, only hand the notice on.
final class ChangeFeed: Sendable {
    typealias Handler = @Sendable (ChangeNotice) -> Void

    private struct Watchers {
        var nextID = 0
        var byTopic: [String: [Int: Handler]] = [:]
        var finished = false
    }

    private let watchers = Mutex(Watchers())

    /// Registers `handler` for the topic's notices; it hears `.reopened` at once.
    func watch(topic: String, _ handler: @escaping Handler) -> ChangeWatch {
        let id = watchers.withLock { state -> Int? in
            guard !state.finished else { return nil }
            state.nextID += 1
            state.byTopic[topic, default: [:]][state.nextID] = handler
            return state.nextID
        }
        guard let id else {
            handler(.finished)
            return ChangeWatch {}
        }
        // The feed is open: anything earlier must be found by offset.
        handler(.reopened)
        return ChangeWatch { [weak self] in
            let removed = self?.watchers.withLock { state -> Handler? in
                let handler = state.byTopic[topic]?.removeValue(forKey: id)
                if state.byTopic[topic]?.isEmpty == true { state.byTopic[topic] = nil }
                return handler
            }
            removed?(.finished)
        }
    }

    /// Publishes events (already committed) to the watchers of their topics.
    func publish(_ events: [Event]) {
        guard !events.isEmpty else { return }
        let targets = watchers.withLock { state -> [(Handler, [Event])] in
            // Most batches hold one topic: no grouping needed.
            let topic = events[0].topic
            if events.allSatisfy({ $0.topic == topic }) {
                return (state.byTopic[topic]?.values).map { $0.map { ($0, events) } } ?? []
            }
            var byTopic: [String: [Event]] = [:]
            for event in events { byTopic[event.topic, default: []].append(event) }
            return byTopic.flatMap { topic, events in (state.byTopic[topic]?.values).map { $0.map { ($0, events) } } ?? [] }
        }
        for (handler, events) in targets { handler(.events(events)) }
    }

    /// Tells every watcher to rescan by offset (the source reopened and may have missed events).
    func rescanAll() {
        let all = watchers.withLock { $0.byTopic.values.flatMap { $0.values } }
        for handler in all { handler(.reopened) }
    }

    /// Ends every watch; later watches hear `.finished` at once.
    func finish() {
        let all = watchers.withLock { state -> [Handler] in
            defer {
                state.byTopic = [:]
                state.finished = true
            }
            return state.byTopic.values.flatMap { $0.values }
        }
        for handler in all { handler(.finished) }
    }
}

extension EventStore {
    /// The topic's change notices as a stream (for tests and simple readers): an empty batch
    /// for `.reopened`, the stream ends with `.finished` or when the consumer stops iterating.
    public func changes(topic: String) -> AsyncStream<[Event]> {
        let (stream, continuation) = AsyncStream<[Event]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        let watch = watchChanges(topic: topic) { notice in
            switch notice {
            case .events(let events): continuation.yield(events)
            case .reopened: continuation.yield([])
            case .finished: continuation.finish()
            }
        }
        continuation.onTermination = { _ in watch.cancel() }
        return stream
    }
}
