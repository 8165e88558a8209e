import Foundation
import Models
import Testing

@testable import StreamBroker

/// When the WAL is checkpointed (the pure policy), and the store's checkpoint thread and the
/// writer's restart checkpoint on a real file database.
@Suite("WAL checkpoints")
struct WALCheckpointTests {
    private let limits = WALCheckpointPolicy.Limits(passivePages: 100, restartPages: 1000)

    @Test func asksForAPassiveCheckpointEveryPassiveLimitOfNewFrames() {
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.committed(walPages: 40, passivePending: false) == .none)
        #expect(policy.committed(walPages: 100, passivePending: false) == .passive)
        #expect(policy.committed(walPages: 150, passivePending: false) == .none)
        #expect(policy.committed(walPages: 199, passivePending: false) == .none)
        #expect(policy.committed(walPages: 200, passivePending: false) == .passive)
    }

    @Test func doesNotQueueASecondPassiveCheckpointWhileOneIsPending() {
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.committed(walPages: 100, passivePending: false) == .passive)
        #expect(policy.committed(walPages: 230, passivePending: true) == .none)
        #expect(policy.committed(walPages: 240, passivePending: false) == .passive)
        #expect(policy.committed(walPages: 300, passivePending: false) == .none)
    }

    @Test func startsOverWhenTheWALRestarted() {
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.committed(walPages: 100, passivePending: false) == .passive)
        #expect(policy.committed(walPages: 150, passivePending: false) == .none)
        // The WAL started over: the next passive checkpoint is one limit from its beginning.
        #expect(policy.committed(walPages: 5, passivePending: false) == .none)
        #expect(policy.committed(walPages: 100, passivePending: false) == .passive)
    }

    @Test func restartsTheWALAtTheRestartLimitOnceNoPassiveCheckpointRuns() {
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.committed(walPages: 999, passivePending: true) == .none)
        #expect(policy.committed(walPages: 1000, passivePending: true) == .none)
        #expect(policy.committed(walPages: 1003, passivePending: false) == .restart)
        policy.restartEnded(succeeded: true)
        // Until the next write restarts the WAL, no second restart.
        #expect(policy.committed(walPages: 1004, passivePending: true) == .none)
        #expect(policy.committed(walPages: 3, passivePending: false) == .none)
        #expect(policy.committed(walPages: 1000, passivePending: false) == .restart)
    }

    @Test func aHeldBackRestartIsTriedAgainAQuarterLimitLaterNotAfterEveryBatch() {
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.committed(walPages: 1010, passivePending: false) == .restart)
        policy.restartEnded(succeeded: false)
        #expect(policy.committed(walPages: 1011, passivePending: true) == .none)
        #expect(policy.committed(walPages: 1259, passivePending: true) == .none)
        #expect(policy.committed(walPages: 1260, passivePending: false) == .restart)
        policy.restartEnded(succeeded: false)
        #expect(policy.committed(walPages: 1300, passivePending: true) == .none)
    }

    @Test func theRestartWaitsLongerForReadersAfterEachHeldBackRestart() {
        let limits = WALCheckpointPolicy.Limits(passivePages: 100, restartPages: 1000, restartWaitMilliseconds: 10, restartWaitMaxMilliseconds: 50)
        var policy = WALCheckpointPolicy(limits: limits)
        #expect(policy.restartWaitMilliseconds == 10)
        policy.restartEnded(succeeded: false)
        #expect(policy.restartWaitMilliseconds == 20)
        policy.restartEnded(succeeded: false)
        policy.restartEnded(succeeded: false)
        #expect(policy.restartWaitMilliseconds == 50)
        policy.restartEnded(succeeded: true)
        #expect(policy.restartWaitMilliseconds == 10)
    }

    // MARK: - On a file database

    private func request(_ topic: String) -> AppendRequest {
        AppendRequest(
            topic: topic, partition: 0, id: UUID().uuidString, key: nil, headers: nil,
            payload: RawJSON(trusted: Array(#"{"p":"\#(String(repeating: "x", count: 200))"}"#.utf8)), idFromClient: false)
    }

    private func directory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("sb-wal-\(UUID().uuidString)").path
    }

    private func walSize(_ directory: String) -> Int {
        let path = (directory as NSString).appendingPathComponent("streambroker.sqlite3-wal")
        return ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
    }

    /// Appends one event per transaction (each waits for the one before).
    private func appendOneByOne(_ store: SQLiteStore, _ count: Int) async throws {
        for _ in 0..<count { _ = try await store.append([request("t")]) }
    }

    @Test(arguments: [SQLiteStore.Durability.normal, .full])
    func checkpointsOffTheWriterAndKeepsTheWALBounded(durability: SQLiteStore.Durability) async throws {
        let dir = directory()
        let small = WALCheckpointPolicy.Limits(passivePages: 8, restartPages: 40)
        let store = SQLiteStore(location: .file(directory: dir), durability: durability, checkpoints: small)
        try await store.open()
        try await appendOneByOne(store, 400)
        let counts = try #require(store.checkpointer).counts
        #expect(counts.passive > 0)
        #expect(counts.restarts > 0)
        // Bounded: without restarts the 400 commits (3 or more frames of a 4 KB page and a
        // 24-byte header each) would leave over 1,200 frames. The writer restarts the WAL at 40
        // frames, but only once a passive checkpoint that is running has ended, so on a busy
        // machine the WAL may pass the limit by what the commits of that wait add: allow 10x.
        #expect(walSize(dir) <= 32 + 10 * 40 * (4096 + 24))
        #expect(try await store.read(topic: "t", partition: 0, from: 1, limit: 1000).map(\.offset) == Array(1...400))
        await store.close()
        let reopened = SQLiteStore(location: .file(directory: dir))
        try await reopened.open()
        #expect(try await reopened.append([request("t")])[0].event.offset == 401)
        #expect(try await reopened.read(topic: "t", partition: 0, from: 1, limit: 1000).count == 401)
        await reopened.close()
    }

    @Test func aReaderHoldingTheWALDelaysTheRestartButNoWrite() async throws {
        let dir = directory()
        let small = WALCheckpointPolicy.Limits(passivePages: 8, restartPages: 40, restartWaitMilliseconds: 1, restartWaitMaxMilliseconds: 4)
        let store = SQLiteStore(location: .file(directory: dir), checkpoints: small)
        try await store.open()
        try await appendOneByOne(store, 5)
        // Another connection keeps a read transaction (a snapshot in the WAL) open.
        let path = (dir as NSString).appendingPathComponent("streambroker.sqlite3")
        let holder = try SQLiteConnection(path: path)
        try holder.execute("BEGIN; SELECT count(*) FROM events;")
        try await appendOneByOne(store, 200)
        let checkpointer = try #require(store.checkpointer)
        #expect(checkpointer.counts.restarts == 0, "the reader's snapshot keeps the WAL from starting over")
        #expect(walSize(dir) > 100 * 4096, "the WAL grows, and the writes go on")
        #expect(try await store.read(topic: "t", partition: 0, from: 1, limit: 1000).count == 205)
        try holder.execute("COMMIT")
        try await appendOneByOne(store, 200)
        #expect(checkpointer.counts.restarts > 0)
        await store.close()
    }
}
