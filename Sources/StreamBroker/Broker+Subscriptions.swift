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
            // New events go from the store's thread straight into the dispatchers' mailboxes;
            // rescans (the feed reopened, and the safety poll) read high-water marks in a task.
            let (rescans, rescan) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
            let instruments = metrics.topic(topic)
            // Every watch hears `.reopened` once when it opens; later ones are reopenings.
            let opened = Flag()
            let watch = store.watchChanges(topic: topic) { [weak self] notice in
                switch notice {
                case .events(let events):
                    guard let self else { return }
                    instruments.wakeups.increment()
                    for dispatcher in self.dispatchers(of: topic) { dispatcher.offer(events) }
                case .reopened:
                    if opened.set() { instruments.rescans.increment() }
                    rescan.yield()
                case .finished:
                    rescan.finish()
                }
            }
            spawn.yield(
                Job {
                    await self.poll(topic: topic, rescans: rescans, rescan: rescan)
                    watch.cancel()
                })
        }
        if isNew {
            // On the loop of the connection that subscribed (one of this process's event loops;
            // none for a dispatcher made off the loops, as in tests).
            spawn.yield(Job(on: EventLoopExecutor.current) { await dispatcher.run() })
            if let group, let coordination = store.coordination {
                let coordinator = GroupCoordinator(dispatcher: dispatcher, group: group, coordination: coordination, broker: self)
                state.withLock { $0.coordinators.append(coordinator) }
                spawn.yield(Job { await coordinator.run() })
            }
        }
        return dispatcher
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

    /// The safety net of one topic's doorbell: every `pollMs`, and whenever the change feed
    /// (re)opened, the dispatchers get the partitions' high-water marks and read by offset
    /// what the feed may have missed. Ends when the feed ends.
    func poll(topic: String, rescans: AsyncStream<Void>, rescan: AsyncStream<Void>.Continuation) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(self.settings.pollMs))
                    rescan.yield()
                }
            }
            for await _ in rescans {
                guard let marks = try? await highWatermarks(topic: topic) else { continue }
                for dispatcher in dispatchers(of: topic) { dispatcher.send(.highWatermarks(marks)) }
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
