/// What several replicas share through the store (SPEC §7): membership, leases with epochs,
/// and fencing of group positions. Only a shared store (MongoDB) provides it; with the embedded
/// store one process owns everything.
public protocol Coordination: Sendable {
    /// Keeps this replica's `members` document for (topic, group) alive.
    func heartbeat(topic: String, group: String, replica: String) async throws
    /// Removes it (the replica has no local subscriber of the group any more).
    func leave(topic: String, group: String, replica: String) async throws
    /// Replicas whose heartbeat for (topic, group) is younger than `ttlMs` by the database clock.
    func liveReplicas(topic: String, group: String, ttlMs: Int64) async throws -> [String]
    /// Takes a lease that is free, expired or already ours; returns its new epoch, or nil when
    /// another owner holds it.
    func takeLease(_ id: String, owner: String, ttlMs: Int64) async throws -> Int64?
    /// Extends a lease we hold at `epoch`; false when it was lost.
    func renewLease(_ id: String, owner: String, epoch: Int64, ttlMs: Int64) async throws -> Bool
    /// Gives a lease up (owner cleared, epoch kept) so that another replica can take it now.
    func releaseLease(_ id: String, owner: String, epoch: Int64) async throws
    /// Makes `epoch` the only one whose commits the group position of a partition accepts.
    func fence(topic: String, partition: Int, group: String, epoch: Int64) async throws
}

extension EventStore {
    /// The store's coordination, when several replicas can share it.
    public var coordination: (any Coordination)? { self as? any Coordination }
}

/// Lease ids as SPEC §3 spells them (built by ``StoreKey``).
enum LeaseID {
    static func partition(topic: String, partition: Int, group: String) -> String {
        StoreKey.groupPartition(topic: topic, partition: partition, group: group).id
    }
    static func job(_ name: String) -> String { StoreKey.job(name).id }
}
