import Models
import Synchronization
import Testing

@testable import StreamBroker

@Suite("Change feed")
struct ChangeFeedTests {
    /// Notices a watcher heard, in order.
    final class Heard: Sendable {
        private let notices = Mutex<[String]>([])
        func record(_ notice: ChangeNotice) {
            let text: String
            switch notice {
            case .events(let events): text = events.map { "\($0.topic)@\($0.offset)" }.joined(separator: ",")
            case .reopened: text = "reopened"
            case .finished: text = "finished"
            }
            notices.withLock { $0.append(text) }
        }
        var all: [String] { notices.withLock { $0 } }
    }

    func event(_ topic: String, _ offset: Int64) -> Event {
        Event(topic: topic, partition: 0, offset: offset, id: "e\(offset)", ts: 0, key: nil, headers: nil, payload: RawJSON(trusted: Array("1".utf8)))
    }

    @Test func aWatcherHearsReopenedFirstThenOnlyItsTopicsEventsOnThePublishersThread() {
        let feed = ChangeFeed()
        let heard = Heard()
        let watch = feed.watch(topic: "a") { heard.record($0) }
        feed.publish([event("a", 1), event("a", 2)])
        feed.publish([event("b", 1)])
        feed.publish([event("b", 2), event("a", 3), event("b", 3)])
        // Handlers run synchronously in `publish`: everything is heard by now.
        #expect(heard.all == ["reopened", "a@1,a@2", "a@3"])
        watch.cancel()
    }

    @Test func cancelEndsTheWatchWithFinishedOnce() {
        let feed = ChangeFeed()
        let heard = Heard()
        let watch = feed.watch(topic: "a") { heard.record($0) }
        watch.cancel()
        watch.cancel()
        feed.publish([event("a", 1)])
        feed.rescanAll()
        #expect(heard.all == ["reopened", "finished"])
    }

    @Test func rescanAllAndFinishReachEveryWatcherAndLaterWatchesHearFinishedAtOnce() {
        let feed = ChangeFeed()
        let (a, b, late) = (Heard(), Heard(), Heard())
        _ = feed.watch(topic: "a") { a.record($0) }
        _ = feed.watch(topic: "b") { b.record($0) }
        feed.rescanAll()
        feed.finish()
        feed.publish([event("a", 1)])
        _ = feed.watch(topic: "a") { late.record($0) }
        #expect(a.all == ["reopened", "reopened", "finished"])
        #expect(b.all == ["reopened", "reopened", "finished"])
        #expect(late.all == ["finished"])
    }
}
