/// Group positions (fenced by epoch) and delivery attempts.
extension SQLiteStore {
    public func positions(topic: String, group: String) async throws -> [GroupPosition] {
        try await write { db in
            var positions: [GroupPosition] = []
            try db.query(
                "SELECT partition, last_committed, epoch FROM group_offsets WHERE topic = ? AND grp = ? ORDER BY partition",
                [.text(topic), .text(group)]
            ) { positions.append(GroupPosition(group: group, partition: Int($0.int(0)), lastCommitted: $0.int(1), epoch: $0.int(2))) }
            return positions
        }
    }

    public func allPositions(topic: String) async throws -> [GroupPosition] {
        try await write { db in
            var positions: [GroupPosition] = []
            try db.query(
                "SELECT grp, partition, last_committed, epoch FROM group_offsets WHERE topic = ? ORDER BY grp, partition",
                [.text(topic)]
            ) {
                positions.append(GroupPosition(group: $0.text(0) ?? "", partition: Int($0.int(1)), lastCommitted: $0.int(2), epoch: $0.int(3)))
            }
            return positions
        }
    }

    public func commit(topic: String, partition: Int, group: String, lastCommitted: Int64, epoch: Int64) async throws {
        let now = clock()
        try await write { db in
            var stored: Int64?
            try db.query(
                "SELECT epoch FROM group_offsets WHERE topic = ? AND partition = ? AND grp = ?",
                [.text(topic), .int(Int64(partition)), .text(group)]
            ) { stored = $0.int(0) }
            if let stored, stored != epoch {
                throw BrokerError(
                    .fenced,
                    "commit for \(StoreKey.groupPartition(topic: topic, partition: partition, group: group)) refused: epoch \(epoch) is not the current \(stored)"
                )
            }
            try db.run(
                """
                INSERT INTO group_offsets(topic, partition, grp, last_committed, epoch, updated_ts) VALUES (?,?,?,?,?,?)
                ON CONFLICT(topic, partition, grp) DO UPDATE SET last_committed = excluded.last_committed, updated_ts = excluded.updated_ts
                """,
                [.text(topic), .int(Int64(partition)), .text(group), .int(lastCommitted), .int(epoch), .int(now)])
        }
    }

    public func attempts(topic: String, partition: Int, group: String, above: Int64) async throws -> [Int64: Int] {
        try await write { db in
            var attempts: [Int64: Int] = [:]
            try db.query(
                "SELECT offset, attempts FROM attempts WHERE topic = ? AND partition = ? AND grp = ? AND offset > ?",
                [.text(topic), .int(Int64(partition)), .text(group), .int(above)]
            ) { attempts[$0.int(0)] = Int($0.int(1)) }
            return attempts
        }
    }

    public func setAttempts(topic: String, partition: Int, group: String, offset: Int64, attempts: Int, reason: String?) async throws {
        try await write { db in
            try db.run(
                """
                INSERT INTO attempts(topic, partition, grp, offset, attempts, last_reason) VALUES (?,?,?,?,?,?)
                ON CONFLICT(topic, partition, grp, offset) DO UPDATE SET attempts = excluded.attempts, last_reason = excluded.last_reason
                """,
                [.text(topic), .int(Int64(partition)), .text(group), .int(offset), .int(Int64(attempts)), reason.map(SQLValue.text) ?? .null])
        }
    }

    public func clearAttempts(topic: String, partition: Int, group: String, upTo: Int64) async throws {
        try await write { db in
            try db.run(
                "DELETE FROM attempts WHERE topic = ? AND partition = ? AND grp = ? AND offset <= ?",
                [.text(topic), .int(Int64(partition)), .text(group), .int(upTo)])
        }
    }
}
