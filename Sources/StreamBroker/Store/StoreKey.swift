/// The ids SPEC §3 spells with colons: the one place they are built.
///
/// `counter` is the `counters` id of a partition; `groupPartition` is the id of a group's
/// position and of its partition lease; `attempt` of one event's delivery attempts for a group;
/// `member` of a replica's membership of a group; `job` of a run-once job's lease.
enum StoreKey: Hashable, Sendable, CustomStringConvertible {
    /// `topic:partition`
    case counter(topic: String, partition: Int)
    /// `topic:partition:group`
    case groupPartition(topic: String, partition: Int, group: String)
    /// `topic:partition:group:offset`
    case attempt(topic: String, partition: Int, group: String, offset: Int64)
    /// `topic:group:replica`
    case member(topic: String, group: String, replica: String)
    /// `job:NAME`
    case job(String)

    /// The id as stored.
    var id: String {
        switch self {
        case .counter(let topic, let partition): "\(topic):\(partition)"
        case .groupPartition(let topic, let partition, let group): "\(topic):\(partition):\(group)"
        case .attempt(let topic, let partition, let group, let offset): "\(topic):\(partition):\(group):\(offset)"
        case .member(let topic, let group, let replica): "\(topic):\(group):\(replica)"
        case .job(let name): "job:\(name)"
        }
    }

    var description: String { id }
}
