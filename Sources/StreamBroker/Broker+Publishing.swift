import Models

// Publishing: every way in (WebSocket, HTTP, outbox) ends here, in order per topic.
extension Broker {
    /// Appends one event; `completion` runs once it is durable (on the store's thread).
    ///
    /// The partition count comes from the topic's config; a publish to a topic whose config is
    /// not known here yet waits (in order, behind earlier ones) until it has been read.
    public func publish(_ request: PublishRequest, completion: @escaping @Sendable (Result<AppendResult, RequestError>) -> Void) {
        let (config, first) = state.withLock { state -> (TopicConfig?, Bool) in
            if state.waitingForConfig[request.topic] == nil, let config = configs.cached(request.topic) { return (config, false) }
            let first = state.waitingForConfig[request.topic] == nil
            state.waitingForConfig[request.topic, default: []].append((request, completion))
            return (nil, first)
        }
        if let config {
            append(request, config: config, completion: completion)
        } else if first {
            // Not a job of `run`'s task group: publishes made while the broker shuts down
            // (audit records, dead letters) must still complete.
            Task { await self.releaseWaiting(topic: request.topic) }
        }
    }

    func releaseWaiting(topic: String) async {
        let config: TopicConfig
        do {
            config = try await configs.load(topic)
        } catch {
            let waiting = state.withLock { $0.waitingForConfig.removeValue(forKey: topic) ?? [] }
            for (request, completion) in waiting { completion(.failure(RequestError(error, rid: request.rid))) }
            return
        }
        while true {
            let waiting = state.withLock { state in
                let waiting = state.waitingForConfig[topic] ?? []
                state.waitingForConfig[topic] = waiting.isEmpty ? nil : []
                return waiting
            }
            if waiting.isEmpty { return }
            for (request, completion) in waiting { append(request, config: config, completion: completion) }
        }
    }

    func append(_ request: PublishRequest, config: TopicConfig, completion: @escaping @Sendable (Result<AppendResult, RequestError>) -> Void) {
        let append: AppendRequest
        do throws(RequestError) {
            var request = request
            if let principal = request.principal {
                try checkACL(config, principal: principal, publishing: true, rid: request.rid)
                request.headers = Headers((request.headers?.pairs ?? []) + [(Self.principalHeader, principal)])
            }
            append = try preparer.prepare(request, partitions: config.partitions)
        } catch {
            return completion(.failure(error))
        }
        // The completion keeps what it needs of the request, not its payload.
        let (metrics, topic, rid) = (self.metrics, request.topic, request.rid)
        store.append([append]) { result in
            switch result {
            case .success(let results):
                if !results[0].duplicate { metrics.published(topic: topic, count: 1) }
                completion(.success(results[0]))
            case .failure(let error):
                completion(.failure(RequestError(error, rid: rid)))
            }
        }
    }

    /// The header that names the authenticated publisher of an event (SPEC §12).
    public static let principalHeader = "x-bus-principal"

    /// Validates and appends several events in one store batch, in order; one result per
    /// request (the outbox drain's way in).
    public func publish(batch requests: [PublishRequest]) async throws -> [AppendResult] {
        guard !requests.isEmpty else { return [] }
        var prepared: [AppendRequest] = []
        for request in requests {
            try request.validate()
            prepared.append(try preparer.prepare(request, partitions: try await configs.load(request.topic).partitions))
        }
        let results = try await store.append(prepared)
        for result in results where !result.duplicate { metrics.published(topic: result.event.topic, count: 1) }
        return results
    }

    public func publish(_ request: PublishRequest) async throws(RequestError) -> AppendResult {
        let result = await withCheckedContinuation { continuation in
            publish(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Publishes a failed message to `${topic}.DLQ` with the headers of SPEC §6.
    func deadLetter(_ event: Event, group: String, attempts: Int, reason: String?) async throws {
        var headers = event.headers?.pairs ?? []
        headers.append(contentsOf: [
            ("x-original-topic", event.topic), ("x-original-partition", String(event.partition)),
            ("x-original-offset", String(event.offset)), ("x-original-group", group),
            ("x-attempts", String(attempts)), ("x-last-reason", reason ?? ""),
        ])
        let request = PublishRequest(
            topic: Self.deadLetterTopic(of: event.topic), key: event.key, headers: Headers(headers), payload: event.payload,
            id: "dlq:\(group):\(event.partition):\(event.offset):\(event.id)")
        _ = try await publish(request)
        metrics.deadLettered(topic: event.topic)
        audit(
            kind: "dead_letter", topic: event.topic,
            fields: [
                ("group", .string(group)), ("partition", .int(event.partition)), ("offset", .int(event.offset)),
                ("attempts", .int(attempts)), ("reason", reason.map(JSONValue.string) ?? .null),
            ])
    }
}
