/// The engine's tunables (the `BUS_*` settings of SPEC §9 that the library uses).
public struct BrokerSettings: Sendable {
    public var ackTimeoutMs: Int64 = 30_000
    public var maxInflight = 32
    public var commitIntervalMs: Int64 = 100
    public var pollMs: Int64 = 1_000
    public var gapTimeoutMs: Int64 = 2_000
    /// Frames an ephemeral subscriber may have queued before it is closed with 1008.
    public var ephemeralQueueLimit = 10_000
    /// How often a snapshot goes to `system.metrics` (0: never).
    public var metricsIntervalMs: Int64 = 5_000
    public var replicaID = "local"
    /// Lease time-to-live for partitions and jobs (several replicas on MongoDB).
    public var leaseTTLMs: Int64 = 10_000
    /// How often topics with `retentionMs` are swept.
    public var retentionIntervalMs: Int64 = 60_000
    /// A group whose consumers keep up takes acks at its next wake-up (a new event, or a sweep
    /// within `commitIntervalMs`) instead of waking for each (``GroupState/acksMayWait``).
    public var acksDeferred = true

    public init() {}
}
