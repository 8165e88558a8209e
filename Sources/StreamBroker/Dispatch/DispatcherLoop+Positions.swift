import Models

/// Subscribing, and where a group's partitions start: loading committed positions (or fixing
/// a new group's start), resets, and partitions acquired with a lease.
extension DispatcherLoop {
    func subscribe(_ session: Session, _ request: SubscribeRequest) async {
        let connection = session.connection
        do {
            try broker.checkACL(try await broker.configs.load(topic), principal: session.principal?.name, publishing: false, rid: request.rid)
            if state.members.keys.contains(where: { $0 != connection.id }), request.filter != state.filter {
                throw RequestError.badRequest("every member of group '\(group)' must use the same filter", rid: request.rid)
            }
            if !loaded { try await load(from: request.from) }
            // `reset` applies `from` always (SPEC §5): also on a group's first SUBSCRIBE in this
            // process (after a restart), which loaded the committed positions.
            if request.reset { _ = try await reset(to: request.from ?? .latest) }
            state.filter = request.filter
            let config = broker.configs.cachedOrDefault(topic)
            state.addMember(
                GroupState.Member(
                    id: connection.id,
                    maxInflight: request.maxInflight ?? settings.maxInflight,
                    ackTimeoutMs: request.ackTimeoutMs ?? config.ackTimeoutMs ?? settings.ackTimeoutMs))
            connections[connection.id] = connection
            connection.send(ServerFrame.subscribed(topic: topic, group: group, rid: request.rid))
            membersChanged()
        } catch {
            // A connection that is already a member keeps its subscription as it was.
            if state.members[connection.id] == nil { session.forget(topic: topic, group: group, serial: serial) }
            connection.send(ServerFrame.error(RequestError(error, rid: request.rid)))
        }
    }

    /// Reads positions, high-water marks and attempts for every partition.
    func load(from: StartPosition?) async throws {
        let config = try await broker.configs.load(topic)
        apply(config)
        let marks = try await store.highWatermarks(topic: topic, partitions: config.partitions)
        if coordinated {
            // Partitions arrive one by one as this replica takes their leases. A new group's
            // start is fixed now (so `latest` means latest at SUBSCRIBE), whoever delivers it.
            initialFrom = from
            for partition in 0..<config.partitions where partition >= state.partitions.count {
                state.addUnownedPartition(index: partition)
            }
            if try await store.positions(topic: topic, group: group).isEmpty {
                for partition in 0..<config.partitions {
                    let start = try await resolve(from ?? .latest, partition: partition, highWatermark: marks[partition])
                    do {
                        try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: 0)
                    } catch let error as BrokerError where error.code == .fenced {
                        // Another replica created it first; its start stands.
                    }
                }
            }
        } else {
            let positions = try await store.positions(topic: topic, group: group)
            let known = Dictionary(positions.map { ($0.partition, $0.lastCommitted) }, uniquingKeysWith: max)
            for partition in 0..<config.partitions {
                if let committed = known[partition] {
                    let attempts = try await store.attempts(topic: topic, partition: partition, group: group, above: committed)
                    state.addPartition(index: partition, start: committed + 1, highWatermark: marks[partition], attempts: attempts)
                } else {
                    // A new group starts at `from` (default latest); a partition added to an
                    // existing group starts at its beginning so nothing is skipped.
                    let start = try await resolve(
                        known.isEmpty ? (from ?? .latest) : .earliest, partition: partition, highWatermark: marks[partition])
                    state.addPartition(index: partition, start: start, highWatermark: marks[partition])
                    try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: 0)
                }
            }
        }
        loaded = true
    }

    func resolve(_ from: StartPosition, partition: Int, highWatermark: Int64) async throws -> Int64 {
        try await store.start(of: from, topic: topic, partition: partition, highWatermark: highWatermark)
    }

    func reset(to from: StartPosition) async throws -> [GroupPosition] {
        let marks = try await store.highWatermarks(topic: topic, partitions: state.partitions.count)
        var positions: [GroupPosition] = []
        for partition in state.partitions.indices {
            state.noteHighWatermark(partition, marks[partition])
            let start = try await resolve(from, partition: partition, highWatermark: state.partitions[partition].highWatermark)
            if coordinated, !state.partitions[partition].owned {
                try await resetElsewhere(partition: partition, group: group, start: start)
                positions.append(GroupPosition(group: group, partition: partition, lastCommitted: start - 1, epoch: 0))
                continue
            }
            let epoch = state.partitions[partition].epoch
            state.reset(partition: partition, start: start)
            state.partitions[partition].epoch = epoch
            try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
            try await store.clearAttempts(topic: topic, partition: partition, group: group, upTo: .max)
            state.partitions[partition].persisted = start - 1
            positions.append(GroupPosition(group: group, partition: partition, lastCommitted: start - 1, epoch: 0))
        }
        broker.audit(kind: "group.reset", topic: topic, fields: [("group", .string(group)), ("from", from.jsonValue)])
        return positions
    }

    /// Loads a partition whose lease this replica just took, from the committed watermark.
    func own(partition: Int, epoch: Int64) async throws {
        let config = try await broker.configs.load(topic)
        let marks = try await store.highWatermarks(topic: topic, partitions: max(config.partitions, partition + 1))
        let positions = try await store.positions(topic: topic, group: group)
        let start: Int64
        var attempts: [Int64: Int] = [:]
        if let position = positions.first(where: { $0.partition == partition }) {
            start = position.lastCommitted + 1
            attempts = try await store.attempts(topic: topic, partition: partition, group: group, above: position.lastCommitted)
        } else {
            start = try await resolve(positions.isEmpty ? (initialFrom ?? .latest) : .earliest, partition: partition, highWatermark: marks[partition])
            try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
        }
        state.addPartition(index: partition, start: start, highWatermark: marks[partition], attempts: attempts, epoch: epoch)
        logger.info("delivering partition", metadata: [LogKey.partition: "\(partition)", LogKey.epoch: "\(epoch)", LogKey.from: "\(start)"])
    }

    /// Resets a partition another replica delivers: the new position is written with a higher
    /// epoch, which fences the owner; it gives the partition up and whoever takes it next
    /// starts from the new position.
    func resetElsewhere(partition: Int, group: String, start: Int64) async throws {
        let current = try await store.positions(topic: topic, group: group).first { $0.partition == partition }
        let epoch = current?.epoch ?? 0
        try await store.commit(topic: topic, partition: partition, group: group, lastCommitted: start - 1, epoch: epoch)
        try await broker.store.coordination?.fence(topic: topic, partition: partition, group: group, epoch: epoch + 1)
    }
}

extension EventStore {
    /// The first offset a subscription from `from` delivers in a partition whose high-water
    /// mark is `highWatermark`.
    func start(of from: StartPosition, topic: String, partition: Int, highWatermark: Int64) async throws -> Int64 {
        switch from {
        case .latest:
            return highWatermark + 1
        case .earliest:
            return try await lowestOffset(topic: topic, partition: partition) ?? highWatermark + 1
        case .offset(let offset):
            if offset > highWatermark { return highWatermark + 1 }
            // Below the first offset still stored (0, or removed by retention): the earliest.
            let lowest = try await lowestOffset(topic: topic, partition: partition) ?? highWatermark + 1
            return max(offset, lowest)
        case .timestamp(let ts):
            return try await firstOffset(topic: topic, partition: partition, atOrAfter: ts) ?? highWatermark + 1
        }
    }
}
