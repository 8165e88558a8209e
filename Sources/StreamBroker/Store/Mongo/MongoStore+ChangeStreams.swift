import Models

/// Change-stream fan-out (SPEC §4): one tail per watched topic up to a limit, then one shared
/// tail of every insert feeding the further topics; plus insert doorbells on other collections.
extension MongoStore {
    /// Per-topic streams are kept to half the pool (less the command threads); further topics
    /// are fed by one shared stream of every insert (SPEC §4), so that watched topics can never
    /// take every pooled client.
    var dedicatedTailLimit: Int { max(0, (options.poolSize - options.threads) / 2) }

    public func watchChanges(topic: String, _ handler: @escaping @Sendable (ChangeNotice) -> Void) -> ChangeWatch {
        let dedicated = tails.withLock { $0.values.filter { if case .topic = $0.target { true } else { false } }.count } < dedicatedTailLimit
        guard dedicated else { return sharedChanges(topic: topic, handler) }
        let tail = ChangeStreamTail(
            target: .topic(topic), pool: pool, awaitMs: options.awaitMs, logger: logger,
            deliver: { documents in
                if documents.isEmpty {
                    handler(.reopened)
                } else {
                    let events = documents.compactMap(MongoDocument.event(from:))
                    if !events.isEmpty { handler(.events(events)) }
                }
            },
            finish: { handler(.finished) })
        start(tail)
        // A tail stays registered until its thread has pushed its client back, so that `close`
        // never destroys the pool under it.
        return ChangeWatch { tail.stop() }
    }

    private func sharedChanges(topic: String, _ handler: @escaping @Sendable (ChangeNotice) -> Void) -> ChangeWatch {
        let startShared = sharedTailStarted.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        let watch = sharedFeed.watch(topic: topic, handler)
        if startShared {
            logger.info("watching further topics through one shared change stream", metadata: [LogKey.dedicated: "\(dedicatedTailLimit)"])
            let feed = sharedFeed
            start(
                ChangeStreamTail(
                    target: .allTopics, pool: pool, awaitMs: options.awaitMs, logger: logger,
                    deliver: { documents in
                        if documents.isEmpty { feed.rescanAll() } else { feed.publish(documents.compactMap(MongoDocument.event(from:))) }
                    },
                    finish: { feed.finish() }))
        }
        return watch
    }

    /// Rings `doorbell` on every insert into `database.collection`, and whenever the stream
    /// (re)opens from now, from a thread of its own holding one pooled client while it waits.
    ///
    /// - Returns: the tail; `stop()` it when done (``close()`` stops and joins it too).
    func watchInserts(database: String, collection: String, doorbell: @escaping @Sendable () -> Void) -> ChangeStreamTail {
        let tail = ChangeStreamTail(
            target: .collection(database: database, name: collection), pool: pool, awaitMs: options.awaitMs, logger: logger,
            deliver: { _ in doorbell() }, finish: {})
        start(tail)
        return tail
    }

    private func start(_ tail: ChangeStreamTail) {
        let key = ObjectIdentifier(tail)
        // Checked under the lock that `close` takes after setting `closed`: a tail either is
        // registered in time to be joined, or never runs.
        let registered = tails.withLock { tails -> Bool in
            guard !closed.load(ordering: .relaxed) else { return false }
            tails[key] = tail
            return true
        }
        guard registered else {
            // Stopped before it starts: the thread ends at once (finishing its stream), never
            // touching the pool.
            tail.stop()
            tail.start {}
            return
        }
        tail.start { [weak self] in self?.tails.withLock { $0[key] = nil } }
    }
}
