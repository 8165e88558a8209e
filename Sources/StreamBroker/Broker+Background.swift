import Foundation
import Models

// The background loops: audit records, retention sweeps, config refresh, metrics snapshots.
extension Broker {
    /// Queues a `system.bus.audit` record: decisions, not traffic.
    func audit(kind: String, topic: String, fields: [(String, JSONValue)]) {
        var members: [(String, JSONValue)] = [
            ("kind", .string(kind)), ("topic", .string(topic)), ("replica", .string(settings.replicaID)),
            ("ts", .int(Int64(Date().timeIntervalSince1970 * 1000))),
        ]
        members.append(contentsOf: fields)
        auditSink.yield(JSONValue.object(members).jsonBytes)
    }

    func runAudit() async {
        for await record in auditRecords {
            do {
                _ = try await publish(PublishRequest(topic: Self.auditTopic, payload: RawJSON(trusted: record)))
            } catch {
                logger.warning("could not write an audit record", metadata: [LogKey.error: "\(error)"])
            }
        }
    }

    /// Deletes events older than their topic's `retentionMs`. With several replicas each topic's
    /// sweep runs on one of them: whoever takes the `job:retention:TOPIC` lease (held until it
    /// expires, so the others skip that round).
    func runRetention() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.retentionIntervalMs)) } catch { return }
            for config in configs.all() {
                guard let retention = config.retentionMs else { continue }
                do {
                    if let coordination = store.coordination {
                        let lease = LeaseID.job("retention:\(config.topic)")
                        let ttl = max(settings.leaseTTLMs, settings.retentionIntervalMs / 2)
                        guard try await coordination.takeLease(lease, owner: settings.replicaID, ttlMs: ttl) != nil else { continue }
                    }
                    let cutoff = Int64(Date().timeIntervalSince1970 * 1000) - retention
                    let deleted = try await store.deleteEvents(topic: config.topic, olderThan: cutoff)
                    if deleted > 0 {
                        logger.info("retention deleted events", metadata: [LogKey.topic: "\(config.topic)", LogKey.deleted: "\(deleted)"])
                    }
                } catch {
                    logger.warning("retention sweep failed", metadata: [LogKey.topic: "\(config.topic)", LogKey.error: "\(error)"])
                }
            }
        }
    }

    /// Picks up topic configs created or changed through other replicas.
    func runConfigRefresh() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.pollMs)) } catch { return }
            do {
                for changed in try await configs.refresh() { configChanged(changed) }
            } catch { logger.debug("config refresh failed", metadata: [LogKey.error: "\(error)"]) }
        }
    }

    func runMetricsSnapshots() async {
        guard settings.metricsIntervalMs > 0 else { return }
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(settings.metricsIntervalMs)) } catch { return }
            let stats = await stats()
            let connections = openConnections
            // Per topic as `/stats` counts it, keyed by name; the broker's own topics left out.
            let topics: [(String, JSONValue)] = stats.topics.filter { !$0.topic.hasPrefix(Self.systemTopicPrefix) }.map { t in
                (
                    t.topic,
                    .object([
                        ("published", .int(t.published)), ("delivered", .int(t.delivered)),
                        ("publishRate", .double(t.publishRate)), ("deliverRate", .double(t.deliverRate)),
                    ])
                )
            }
            guard !topics.isEmpty || !stats.ownership.isEmpty || connections > 0 else { continue }
            // `groups` and `ownership` as `/stats` has them, so that a page behind a load
            // balancer (where /stats answers for one replica) sees every replica's partitions.
            let payload = JSONValue.object([
                ("replica", .string(settings.replicaID)), ("ts", .int(Int64(Date().timeIntervalSince1970 * 1000))),
                ("topics", .object(topics)), ("groups", .array(stats.groups.map(\.jsonValue))),
                ("ownership", .array(stats.ownership.map(\.jsonValue))), ("connections", .int(connections)),
            ])
            _ = try? await publish(PublishRequest(topic: Self.metricsTopic, payload: RawJSON(trusted: payload.jsonBytes)))
        }
    }
}
