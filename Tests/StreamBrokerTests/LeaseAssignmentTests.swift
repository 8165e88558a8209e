import Testing

@testable import StreamBroker

@Suite("Lease assignment state machine")
struct LeaseAssignmentTests {
    typealias Action = LeaseAssignment.Action
    typealias Result = LeaseAssignment.Result

    /// Answers the machine's actions in order, checking each against the script; returns the
    /// action after the last scripted one.
    @discardableResult
    func play(
        _ machine: inout LeaseAssignment, from first: Action, now: Int64 = 0, _ script: [(Action, Result)],
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Action {
        var action = first
        for (expected, result) in script {
            #expect(action == expected, sourceLocation: sourceLocation)
            guard action == expected else { return action }
            action = machine.next(after: result, now: now)
        }
        return action
    }

    /// A replica "a" holding `held` after a first round.
    func holding(_ held: [Int: Int64], replica: String = "a") -> LeaseAssignment {
        var m = LeaseAssignment(replica: replica, ttlMs: 3000)
        var script: [(Action, Result)] = [
            (.heartbeat, .done), (.listReplicas, .replicas([replica])), (.readPartitionCount, .partitionCount(held.count)),
        ]
        for (partition, epoch) in held.sorted(by: { $0.key < $1.key }) {
            script += [
                (.take(partition: partition), .taken(epoch)), (.fence(partition: partition, epoch: epoch), .done),
                (.own(partition: partition, epoch: epoch), .done), (.audit(.acquired, partition: partition, epoch: epoch), .done),
            ]
        }
        let end = play(&m, from: m.startRound(localMembers: 1, now: 0), script)
        #expect(end == .sleep(until: 1000))
        return m
    }

    @Test func aLoneReplicaTakesEveryPartitionItCan() {
        var m = LeaseAssignment(replica: "a", ttlMs: 3000)
        let end = play(
            &m, from: m.startRound(localMembers: 2, now: 500),
            [
                (.heartbeat, .done), (.listReplicas, .replicas([])), (.readPartitionCount, .partitionCount(2)),
                (.take(partition: 0), .taken(4)), (.fence(partition: 0, epoch: 4), .done), (.own(partition: 0, epoch: 4), .done),
                (.audit(.acquired, partition: 0, epoch: 4), .done),
                (.take(partition: 1), .taken(nil)),
            ])
        #expect(end == .sleep(until: 1000), "rounds every TTL/3 from the end of the round")
        #expect(m.held == [0: 4])
        #expect(m.joined)
    }

    @Test func theNextRoundRenewsAndRetriesWhatWasTakenElsewhere() {
        var m = holding([0: 4])
        // Partition 1 appeared; its lease is held by a replica that died: the store refuses it
        // until it expires (by the database's clock), then hands it over with a new epoch.
        play(
            &m, from: m.startRound(localMembers: 1, now: 1000),
            [
                (.heartbeat, .done), (.listReplicas, .replicas(["a"])), (.readPartitionCount, .partitionCount(2)),
                (.renew(partition: 0, epoch: 4), .renewed(true)), (.take(partition: 1), .taken(nil)),
            ])
        let end = play(
            &m, from: m.startRound(localMembers: 1, now: 2000), now: 2000,
            [
                (.heartbeat, .done), (.listReplicas, .replicas(["a"])), (.readPartitionCount, .partitionCount(2)),
                (.renew(partition: 0, epoch: 4), .renewed(true)), (.take(partition: 1), .taken(9)),
                (.fence(partition: 1, epoch: 9), .done), (.own(partition: 1, epoch: 9), .done), (.audit(.acquired, partition: 1, epoch: 9), .done),
            ])
        #expect(end == .sleep(until: 3000))
        #expect(m.held == [0: 4, 1: 9])
    }

    @Test func aNewReplicaGetsItsShareAfterTheOwnerCommitsAndReleases() {
        var m = holding([0: 1, 1: 1, 2: 1, 3: 1])
        // "b" joined: sorted ["a", "b"], so a keeps 0 and 2, and gives 1 and 3 up.
        let end = play(
            &m, from: m.startRound(localMembers: 1, now: 1000), now: 1000,
            [
                (.heartbeat, .done), (.listReplicas, .replicas(["b", "a"])), (.readPartitionCount, .partitionCount(4)),
                (.disown(partition: 1), .done), (.release(partition: 1, epoch: 1), .done), (.audit(.released, partition: 1, epoch: 1), .done),
                (.disown(partition: 3), .done), (.release(partition: 3, epoch: 1), .done), (.audit(.released, partition: 3, epoch: 1), .done),
                (.renew(partition: 0, epoch: 1), .renewed(true)), (.renew(partition: 2, epoch: 1), .renewed(true)),
            ])
        #expect(end == .sleep(until: 2000))
        #expect(m.held == [0: 1, 2: 1])
    }

    @Test func aRenewalThatFindsTheLeaseGoneDropsIt() {
        var m = holding([0: 2, 1: 2])
        play(
            &m, from: m.startRound(localMembers: 1, now: 1000),
            [
                (.heartbeat, .done), (.listReplicas, .replicas(["a"])), (.readPartitionCount, .partitionCount(2)),
                (.renew(partition: 0, epoch: 2), .renewed(false)), (.disown(partition: 0), .done),
                (.warn(.leaseLost(partition: 0, epoch: 2)), .done), (.audit(.lost, partition: 0, epoch: 2), .done),
                (.renew(partition: 1, epoch: 2), .renewed(true)),
                // It is still this replica's share: try to take it back.
                (.take(partition: 0), .taken(nil)),
            ])
        #expect(m.held == [1: 2])
    }

    @Test func aFailedStoreCallEndsTheRoundWithAWarning() {
        var m = holding([0: 2])
        let end = play(
            &m, from: m.startRound(localMembers: 1, now: 1000), now: 1000,
            [(.heartbeat, .done), (.listReplicas, .failed("down")), (.warn(.roundFailed(error: "down")), .done)])
        #expect(end == .sleep(until: 2000))
        #expect(m.held == [0: 2], "the leases are kept; they are renewed next round or expire")
    }

    @Test func aFailedReleaseEndsTheRoundButThePartitionIsGone() {
        var m = holding([0: 1, 1: 1])
        play(
            &m, from: m.startRound(localMembers: 1, now: 0),
            [
                (.heartbeat, .done), (.listReplicas, .replicas(["a", "b"])), (.readPartitionCount, .partitionCount(2)),
                (.disown(partition: 1), .done), (.release(partition: 1, epoch: 1), .failed("down")), (.warn(.roundFailed(error: "down")), .done),
            ])
        #expect(m.held == [0: 1], "disowned: the lease expires if the release failed")
    }

    @Test func withoutLocalSubscribersLeasesAreKeptWhileNobodyElseWantsThem() {
        var m = holding([0: 3])
        let end = play(
            &m, from: m.startRound(localMembers: 0, now: 0),
            [(.leave, .done), (.listReplicas, .replicas(["a"])), (.renew(partition: 0, epoch: 3), .renewed(true))])
        #expect(end == .sleep(until: 1000))
        #expect(!m.joined && m.held == [0: 3])
        // Another replica has subscribers now: hand over everything.
        play(
            &m, from: m.startRound(localMembers: 0, now: 0),
            [
                (.listReplicas, .replicas(["b"])), (.disown(partition: 0), .done), (.release(partition: 0, epoch: 3), .done),
                (.audit(.released, partition: 0, epoch: 3), .done),
            ])
        #expect(m.held.isEmpty)
        #expect(m.startRound(localMembers: 0, now: 0) == .sleep(until: 1000), "nothing held, not joined: nothing to do")
    }

    @Test func stopReleasesEverythingEvenWhenAReleaseFails() {
        var m = holding([0: 5, 1: 5])
        let end = play(
            &m, from: m.stop(now: 0),
            [
                (.disown(partition: 0), .done), (.release(partition: 0, epoch: 5), .failed("down")),
                (.warn(.releaseFailed(partition: 0, error: "down")), .done),
                (.disown(partition: 1), .done), (.release(partition: 1, epoch: 5), .done), (.audit(.released, partition: 1, epoch: 5), .done),
                (.leave, .failed("down")),
            ])
        #expect(end == .stopped)
        #expect(m.held.isEmpty && !m.joined)
    }

    @Test func aFencedCommitDropsOnlyThatEpoch() {
        var m = holding([0: 7])
        #expect(m.commitFenced(partition: 0, epoch: 6).isEmpty, "a stale signal must not drop the newer lease")
        #expect(m.held == [0: 7])
        #expect(m.commitFenced(partition: 0, epoch: 7) == [.warn(.partitionFenced(partition: 0, epoch: 7)), .audit(.lost, partition: 0, epoch: 7)])
        #expect(m.held.isEmpty)
    }

    @Test func theShareRule() {
        #expect(LeaseAssignment.share(of: "b", replicas: ["c", "a", "b", "a"], partitions: 7) == [1, 4])
        #expect(LeaseAssignment.share(of: "a", replicas: [], partitions: 3).isEmpty)
    }
}
