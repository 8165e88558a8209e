import Foundation
import Models
import Synchronization
import Testing

@testable import StreamBroker

/// The embedded store keeps no index on `ts`: a partition's times never go down as its offsets
/// go up, and time look-ups and retention search by offset on that order.
@Suite("SQLite time order")
struct SQLiteTimeOrderTests {
    final class Clock: Sendable {
        let value = Mutex<Int64>(0)
        var now: Int64 { value.withLock { $0 } }
        func set(_ now: Int64) { value.withLock { $0 = now } }
    }

    func request(_ topic: String, partition: Int = 0) -> AppendRequest {
        AppendRequest(
            topic: topic, partition: partition, id: UUID().uuidString, key: nil, headers: nil, payload: RawJSON(trusted: Array("{}".utf8)),
            idFromClient: false)
    }

    /// An in-memory store on `Clock`, open for `body`.
    func withMemoryStore(_ body: (SQLiteStore, Clock) async throws -> Void) async throws {
        let clock = Clock()
        let store = SQLiteStore(location: .memory, clock: { clock.now })
        try await store.open()
        try await body(store, clock)
        await store.close()
    }

    func withDirectory(_ body: (String) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sb-time-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await body(dir)
    }

    @Test func aClockThatGoesBackDoesNotMakeTimesGoDownAcrossRestarts() async throws {
        try await withDirectory { dir in
            let clock = Clock()
            clock.set(5_000)
            let store = SQLiteStore(location: .file(directory: dir), clock: { clock.now })
            try await store.open()
            _ = try await store.append([request("t")])
            clock.set(1_000)
            _ = try await store.append([request("t"), request("other")])
            await store.close()

            clock.set(2_000)
            let reopened = SQLiteStore(location: .file(directory: dir), clock: { clock.now })
            try await reopened.open()
            _ = try await reopened.append([request("t")])
            let times = try await reopened.read(topic: "t", partition: 0, from: 1, limit: 10).map(\.ts)
            #expect(times == [5_000, 5_000, 5_000], "never below the partition's newest event, also after a restart")
            clock.set(6_000)
            _ = try await reopened.append([request("t")])
            #expect(try await reopened.read(topic: "t", partition: 0, from: 4, limit: 1).map(\.ts) == [6_000])
            await reopened.close()
        }
    }

    @Test func firstOffsetFindsTheFirstEventAtOrAfterATimeAcrossGaps() async throws {
        try await withMemoryStore { store, clock in
            // 40 events, two per step of 10 ms; then the first 8 go (retention) and so do 15 – 22
            // and 30 (holes inside).
            for index in 0..<40 {
                clock.set(Int64(100 + (index / 2) * 10))
                _ = try await store.append([request("t")])
            }
            #expect(try await store.deleteEvents(topic: "t", olderThan: 131) == 8)
            let holes = try await store.write { db in
                try db.run("DELETE FROM events WHERE topic = 't' AND (offset BETWEEN 15 AND 22 OR offset = 30)")
            }
            #expect(holes == 9)
            let stored = try await store.read(topic: "t", partition: 0, from: 1, limit: 100)
            #expect(stored.first?.offset == 9 && stored.count == 23)
            for time in Int64(0)...300 {
                let expected = stored.first { $0.ts >= time }?.offset
                #expect(try await store.firstOffset(topic: "t", partition: 0, atOrAfter: time) == expected, "at \(time)")
            }
            #expect(try await store.firstOffset(topic: "t", partition: 1, atOrAfter: 0) == nil, "an empty partition")
        }
    }

    @Test func aPartitionsTimesDoNotHoldBackAnother() async throws {
        try await withMemoryStore { store, clock in
            clock.set(10_000)
            _ = try await store.append([request("ahead")])
            clock.set(1_000)
            _ = try await store.append([request("other"), request("other", partition: 1)])
            _ = try await store.append([request("ahead")])
            #expect(try await store.read(topic: "other", partition: 0, from: 1, limit: 10).map(\.ts) == [1_000])
            #expect(try await store.read(topic: "other", partition: 1, from: 1, limit: 10).map(\.ts) == [1_000])
            #expect(try await store.read(topic: "ahead", partition: 0, from: 1, limit: 10).map(\.ts) == [10_000, 10_000])
            // A job appending to both stamps its events with the newer partition's time.
            _ = try await store.append([request("other"), request("ahead")])
            #expect(try await store.read(topic: "other", partition: 0, from: 2, limit: 10).map(\.ts) == [10_000])
        }
    }

    @Test func retentionDeletesByTimeInEveryPartitionAndOnlyThere() async throws {
        try await withMemoryStore { store, clock in
            for step in 0..<10 {
                clock.set(Int64(1_000 + step * 100))
                _ = try await store.append([request("r", partition: 0), request("r", partition: 2), request("r", partition: 2), request("keep")])
            }
            // Before 1,450: steps 0 to 4, one event in partition 0 and two in partition 2 each.
            #expect(try await store.deleteEvents(topic: "r", olderThan: 1_450) == 15)
            for partition in [0, 2] {
                let left = try await store.read(topic: "r", partition: partition, from: 1, limit: 100)
                #expect(left.allSatisfy { $0.ts >= 1_450 } && left.count == (partition == 0 ? 5 : 10))
            }
            #expect(try await store.read(topic: "keep", partition: 0, from: 1, limit: 100).count == 10)
            #expect(try await store.deleteEvents(topic: "r", olderThan: 99_999) == 15, "everything")
            #expect(try await store.deleteEvents(topic: "none", olderThan: 99_999) == 0)
        }
    }

    @Test func anOlderStoreIsPutInTimeOrderAndLosesItsTimeIndexWhenOpened() async throws {
        try await withDirectory { dir in
            let clock = Clock()
            let store = SQLiteStore(location: .file(directory: dir), clock: { clock.now })
            try await store.open()
            for time: Int64 in [100, 300, 200, 200, 500, 400] {
                clock.set(time)
                _ = try await store.append([request("t")])
            }
            _ = try await store.append([request("t", partition: 1)])
            // What an older writer could leave: times out of order, and the index.
            try await store.write { db in
                try db.execute(
                    """
                    UPDATE events SET ts = CASE offset WHEN 2 THEN 500 WHEN 3 THEN 200 WHEN 4 THEN 250 WHEN 6 THEN 400 ELSE ts END WHERE topic = 't' AND partition = 0;
                    UPDATE events SET ts = 50 WHERE topic = 't' AND partition = 1;
                    CREATE INDEX events_topic_partition_ts ON events(topic, partition, ts);
                    """)
            }
            #expect(try await store.read(topic: "t", partition: 0, from: 1, limit: 10).map(\.ts) == [100, 500, 200, 250, 500, 400])
            await store.close()

            let reopened = SQLiteStore(location: .file(directory: dir), clock: { clock.now })
            try await reopened.open()
            #expect(try await reopened.read(topic: "t", partition: 0, from: 1, limit: 10).map(\.ts) == [100, 500, 500, 500, 500, 500])
            #expect(try await reopened.read(topic: "t", partition: 1, from: 1, limit: 10).map(\.ts) == [50], "per partition")
            let indexes = try await reopened.read { db in
                var names: [String] = []
                try db.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'") { names.append($0.text(0) ?? "") }
                return names
            }
            #expect(indexes.contains("events_topic_id"))
            #expect(!indexes.contains("events_topic_partition_ts"))
            await reopened.close()
        }
    }

    /// Events stamped after the clock's `now` (the clock was set back below the newest time):
    /// a purge of the dead letters still takes every one.
    @Test func purgingDeadLettersTakesThoseStampedAfterTheClock() async throws {
        let store = SQLiteStore(location: .memory, clock: { Int64(Date().timeIntervalSince1970 * 1000) + 3_600_000 })
        let broker = Broker(store: store)
        try await broker.openStore()
        let payload = RawJSON(trusted: Array("1".utf8))
        _ = try await broker.publish(PublishRequest(topic: "t", payload: payload))
        for _ in 0..<3 { _ = try await broker.publish(PublishRequest(topic: Broker.deadLetterTopic(of: "t"), payload: payload)) }
        #expect(try await broker.purgeDeadLetters(topic: "t") == 3)
        #expect(try await store.read(topic: "t.DLQ", partition: 0, from: 1, limit: 10).isEmpty)
        await store.close()
    }
}
