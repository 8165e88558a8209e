/// The metadata keys of the broker's logs, in one place, so that log queries and dashboards
/// can rely on them (after postgres-nio's `Logging+PSQL.swift`).
public enum LogKey {
    // What a record is about.
    public static let topic = "topic"
    public static let topics = "topics"
    public static let group = "group"
    public static let partition = "partition"
    public static let offset = "offset"
    public static let epoch = "epoch"
    public static let replica = "replica"
    public static let job = "job"
    public static let outbox = "outbox"
    public static let database = "database"
    public static let path = "path"
    // What happened.
    public static let error = "error"
    public static let reason = "reason"
    public static let count = "count"
    public static let rows = "rows"
    public static let new = "new"
    public static let deleted = "deleted"
    public static let first = "first"
    public static let from = "from"
    public static let through = "through"
    public static let dedicated = "dedicated"
}
