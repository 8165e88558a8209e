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
        let clock = Clock()
        let store = SQLiteStore(location: .memory, clock: { clock.now })
        try await store.open()
        // 40 events, two per millisecond step of 10, then the first 7 deleted.
        for index in 0..<40 {
            clock.set(Int64(100 + (index / 2) * 10))
            _ = try await store.append([request("t")])
        }
        #expect(try await store.deleteEvents(topic: "t", olderThan: 131) == 8)
        let stored = try await store.read(topic: "t", partition: 0, from: 1, limit: 100)
        #expect(stored.first?.offset == 9)
        for time in stride(from: Int64(0), through: 300, by: 5) {
            let expected = stored.first { $0.ts >= time }?.offset
            #expect(try await store.firstOffset(topic: "t", partition: 0, atOrAfter: time) == expected, "at \(time)")
        }
        #expect(try await store.firstOffset(topic: "t", partition: 1, atOrAfter: 0) == nil, "an empty partition")
        await store.close()
    }

    @Test func retentionDeletesByTimeInEveryPartitionAndOnlyThere() async throws {
        let clock = Clock()
        let store = SQLiteStore(location: .memory, clock: { clock.now })
        try await store.open()
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
        await store.close()
    }

    @Test func anOlderStoreLosesItsTimeIndexWhenOpened() async throws {
        try await withDirectory { dir in
            let store = SQLiteStore(location: .file(directory: dir))
            try await store.open()
            try await store.write { db in try db.execute("CREATE INDEX events_topic_partition_ts ON events(topic, partition, ts)") }
            await store.close()
            let reopened = SQLiteStore(location: .file(directory: dir))
            try await reopened.open()
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
}
