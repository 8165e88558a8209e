import Models

// Subscriptions: connections, the registry of dispatchers, and each topic's doorbell.
extension Broker {
    /// Starts serving one client connection.
    public func connect() -> Session {
        let id = state.withLock { state -> UInt64 in
            state.nextConnection += 1
            state.openConnections += 1
            // Recorded under the lock, so that the gauge never shows an older count.
            metrics.connections.record(Double(state.openConnections))
            return state.nextConnection
        }
        return Session(broker: self, connection: ClientConnection(id: id))
    }

    /// A session ended (called once per ``connect()``).
    func disconnected() {
        state.withLock { state in
            state.openConnections -= 1
            metrics.connections.record(Double(state.openConnections))
        }
    }

    /// The dispatcher of a group, or of the topic's ephemeral subscriptions (both shared).
    func dispatcher(topic: String, group: String?) -> GroupDispatcher {
        let (dispatcher, isNew, startWatcher) = state.withLock { state -> (GroupDispatcher, Bool, Bool) in
            if let group, let existing = state.topics[topic]?.groups[group] { return (existing, false, false) }
            if group == nil, let existing = state.topics[topic]?.dispatchers.values.first(where: { $0.group == nil }) {
                return (existing, false, false)
            }
            if state.topics[topic] == nil { state.topics[topic] = Topic() }
            state.nextSerial += 1
            let dispatcher = GroupDispatcher(topic: topic, group: group, serial: state.nextSerial, broker: self)
            state.topics[topic]!.dispatchers[dispatcher.serial] = dispatcher
            if let group { state.topics[topic]!.groups[group] = dispatcher }
            let startWatcher = !state.topics[topic]!.watched
            state.topics[topic]!.watched = true
            return (dispatcher, true, startWatcher)
        }
        if startWatcher {
            // Subscribe to the change feed before any dispatcher reads its high-water marks.
            let changes = store.changes(topic: topic)
            spawn.yield { await self.watch(topic: topic, changes: changes) }
        }
        if isNew {
            spawn.yield { await dispatcher.run() }
            if let group, let coordination = store.coordination {
                let coordinator = GroupCoordinator(dispatcher: dispatcher, group: group, coordination: coordination, broker: self)
                state.withLock { $0.coordinators.append(coordinator) }
                spawn.yield { await coordinator.run() }
            }
        }
        return dispatcher
    }

    func unregister(topic: String, serial: UInt64) {
        state.withLock { state in
            guard let removed = state.topics[topic]?.dispatchers.removeValue(forKey: serial) else { return }
            if let group = removed.group, state.topics[topic]?.groups[group]?.serial == serial {
                state.topics[topic]?.groups[group] = nil
            }
        }
    }

    /// Ends an ephemeral dispatcher whose last subscriber left, unless an input arrived for it
    /// meanwhile: its mailbox is finished and it leaves the registry under the broker's lock,
    /// so a new SUBSCRIBE either reaches it before (and it goes on) or finds a new one.
    func retire(_ dispatcher: GroupDispatcher) -> Bool {
        state.withLock { state in
            guard dispatcher.finishIfIdle() else { return false }
            state.topics[dispatcher.topic]?.dispatchers[dispatcher.serial] = nil
            return true
        }
    }

    func dispatchers(of topic: String) -> [GroupDispatcher] {
        state.withLock { state in state.topics[topic].map { Array($0.dispatchers.values) } ?? [] }
    }

    /// The doorbell of one topic: new events from the change feed, and the safety poll.
    func watch(topic: String, changes: AsyncStream<[Event]>) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(self.settings.pollMs))
                    guard let marks = try? await self.highWatermarks(topic: topic) else { continue }
                    for dispatcher in self.dispatchers(of: topic) { dispatcher.send(.highWatermarks(marks)) }
                }
            }
            for await events in changes {
                if events.isEmpty {
                    // The feed (re)opened: rescan by offset from the current high-water marks.
                    guard let marks = try? await highWatermarks(topic: topic) else { continue }
                    for dispatcher in dispatchers(of: topic) { dispatcher.send(.highWatermarks(marks)) }
                } else {
                    for dispatcher in dispatchers(of: topic) { dispatcher.send(.appended(events)) }
                }
            }
            group.cancelAll()
        }
    }

    /// Moves a group to a new position (SPEC §8 reset).
    public func resetGroup(topic: String, group: String, from: StartPosition) async throws -> [GroupPosition] {
        let dispatcher = dispatcher(topic: topic, group: group)
        let result = await withCheckedContinuation { continuation in
            dispatcher.send(.reset(from, continuation))
        }
        return try result.get()
    }
}
