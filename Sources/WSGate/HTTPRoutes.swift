import Foundation
import Hummingbird
import Models
import NIOCore
import Prometheus
import StreamBroker

/// The HTTP API of SPEC §8 (the dashboard is in StaticRoutes.swift). With authentication
/// on (SPEC §12), `/healthz`, `/readyz` and `/metrics` stay open, reads need a valid
/// credential, publishing needs the topic's publish permission, and changes need `admin`.
func addHTTPRoutes(
    to router: Router<GatewayRequestContext>, config: GatewayConfig, broker: Broker, gate: AuthGate?, registry: PrometheusCollectorRegistry
) {
    let access = HTTPAccess(gate: gate, broker: broker)
    router.get("healthz") { _, _ in
        HTTPJSON.response(.object([("status", .string("ok"))]))
    }
    router.get("readyz") { _, _ in
        let ready = await broker.isReady()
        return HTTPJSON.response(.object([("ready", .bool(ready))]), status: ready ? .ok : .serviceUnavailable)
    }
    router.get("metrics") { _, _ in
        await broker.refreshGauges()
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer)))
    }
    router.get("stats") { request, context in
        await HTTPJSON.handle {
            _ = try await access.principal(request, context)
            return HTTPJSON.response(await broker.statsJSON())
        }
    }
    router.get("topics") { request, context in
        await HTTPJSON.handle {
            _ = try await access.principal(request, context)
            return HTTPJSON.response(.object([("topics", .array(broker.configs.all().map(\.jsonValue)))]))
        }
    }
    router.post("topics") { request, context in
        await HTTPJSON.handle {
            try await access.admin(request, context, action: "create or change a topic")
            let body = try HTTPJSON.parse(try await HTTPJSON.body(request, limit: config.maxFrameBytes))
            let stored = try await broker.putTopicConfig(try TopicConfig.decode(body))
            return HTTPJSON.response(stored.jsonValue)
        }
    }
    router.get("topics/:topic") { request, context in
        await HTTPJSON.handle {
            _ = try await access.principal(request, context)
            let topic = try topicName(context)
            guard let config = try await broker.configs.lookup(topic) else { throw RequestError(.notFound, "no topic '\(topic)'") }
            let marks = try await broker.highWatermarks(topic: topic)
            let partitions: [JSONValue] = marks.enumerated().map { .object([("partition", .int($0.offset)), ("highWatermark", .int($0.element))]) }
            return HTTPJSON.response(.object([("config", config.jsonValue), ("partitions", .array(partitions))]))
        }
    }
    router.get("topics/:topic/offsets") { request, context in
        await HTTPJSON.handle {
            _ = try await access.principal(request, context)
            let topic = try topicName(context)
            guard try await broker.configs.lookup(topic) != nil else { throw RequestError(.notFound, "no topic '\(topic)'") }
            let marks = try await broker.highWatermarks(topic: topic)
            let positions = try await broker.store.allPositions(topic: topic)
            var groups: [(String, [JSONValue])] = []
            for position in positions {
                let mark = position.partition < marks.count ? marks[position.partition] : 0
                let entry = JSONValue.object([
                    ("partition", .int(position.partition)), ("committed", .int(position.lastCommitted)),
                    ("highWatermark", .int(mark)), ("lag", .int(max(0, mark - position.lastCommitted))),
                ])
                if let index = groups.firstIndex(where: { $0.0 == position.group }) {
                    groups[index].1.append(entry)
                } else {
                    groups.append((position.group, [entry]))
                }
            }
            return HTTPJSON.response(
                .object([
                    ("topic", .string(topic)),
                    ("groups", .array(groups.map { .object([("group", .string($0.0)), ("partitions", .array($0.1))]) })),
                ]))
        }
    }
    router.post("topics/:topic/events") { request, context in
        await HTTPJSON.handle {
            let topic = try topicName(context)
            let body = try await HTTPJSON.body(request, limit: config.maxFrameBytes)
            var publish = try PublishRequest.decodeHTTP(body, topic: topic)
            publish.rid = nil
            let principal = try await access.principal(request, context)
            try broker.authorizePublish(publish, by: principal, address: context.remoteAddress)
            publish.principal = principal?.name
            let stored = try await broker.publish(publish)
            return HTTPJSON.response(
                .object([
                    ("topic", .string(stored.event.topic)), ("partition", .int(stored.event.partition)),
                    ("offset", .int(stored.event.offset)), ("id", .string(stored.event.id)), ("duplicate", .bool(stored.duplicate)),
                ]))
        }
    }
    router.get("topics/:topic/events") { request, context in
        await HTTPJSON.handle {
            // Reading events is subscribing: the credential's subscribe patterns and the ACL apply.
            let principal = try await access.principal(request, context)
            let topic = try topicName(context)
            try broker.authorizeSubscribe(topic: topic, group: nil, by: principal, rid: nil)
            guard let config = try await broker.configs.lookup(topic) else { throw RequestError(.notFound, "no topic '\(topic)'") }
            try broker.checkACL(config, principal: principal?.name, publishing: false, rid: nil)
            let query = request.uri.queryParameters
            func int(_ name: String, default value: Int64, range: ClosedRange<Int64>) throws -> Int64 {
                guard let raw = query[name[...]] else { return value }
                guard let parsed = Int64(String(raw)), range.contains(parsed) else {
                    throw RequestError.badRequest("\(name) must be an integer in \(range.lowerBound)...\(range.upperBound)")
                }
                return parsed
            }
            let partition = try int("partition", default: 0, range: 0...Int64(config.partitions - 1))
            let from = try int("from", default: 1, range: 1...Int64.max)
            let limit = try int("limit", default: 100, range: 1...1000)
            let events = try await broker.store.read(topic: topic, partition: Int(partition), from: from, limit: Int(limit))
            var bytes = Array(#"{"events":"#.utf8)
            HTTPJSON.appendEnvelopes(events, to: &bytes)
            bytes.append(UInt8(ascii: "}"))
            return HTTPJSON.response(bytes)
        }
    }
    // Dead letters (SPEC §14): reading them is reading `TOPIC.DLQ`; redrive and purge need admin.
    router.get("topics/:topic/dlq") { request, context in
        await HTTPJSON.handle {
            let principal = try await access.principal(request, context)
            let topic = try topicName(context)
            let deadLetterTopic = Broker.deadLetterTopic(of: topic)
            try broker.authorizeSubscribe(topic: deadLetterTopic, group: nil, by: principal, rid: nil)
            if let config = try await broker.configs.lookup(deadLetterTopic) {
                try broker.checkACL(config, principal: principal?.name, publishing: false, rid: nil)
            }
            let group = try groupQuery(request)
            let limit = try limitQuery(request, default: 100, max: 10_000)
            let events = try await broker.deadLetters(topic: topic, group: group, limit: limit)
            var bytes = Array(#"{"topic":"#.utf8)
            JSONWriter.writeString(topic, into: &bytes)
            bytes.append(contentsOf: #","deadLetters":"#.utf8)
            HTTPJSON.appendEnvelopes(events, to: &bytes)
            bytes.append(UInt8(ascii: "}"))
            return HTTPJSON.response(bytes)
        }
    }
    router.post("topics/:topic/dlq/redrive") { request, context in
        await HTTPJSON.handle {
            let topic = try topicName(context)
            try await access.admin(request, context, action: "redrive dead letters", topic: topic)
            let redriven = try await broker.redriveDeadLetters(topic: topic, group: try groupQuery(request))
            let results: [JSONValue] = redriven.map { r in
                .object([
                    (
                        "deadLetter",
                        .object([
                            ("topic", .string(r.deadLetter.topic)), ("partition", .int(r.deadLetter.partition)),
                            ("offset", .int(r.deadLetter.offset)), ("id", .string(r.deadLetter.id)),
                        ])
                    ),
                    (
                        "published",
                        .object([
                            ("topic", .string(r.published.event.topic)), ("partition", .int(r.published.event.partition)),
                            ("offset", .int(r.published.event.offset)), ("id", .string(r.published.event.id)),
                            ("duplicate", .bool(r.published.duplicate)),
                        ])
                    ),
                ])
            }
            return HTTPJSON.response(
                .object([
                    ("topic", .string(topic)), ("redriven", .int(redriven.filter { !$0.published.duplicate }.count)),
                    ("duplicates", .int(redriven.filter(\.published.duplicate).count)), ("results", .array(results)),
                ]))
        }
    }
    router.post("topics/:topic/dlq/purge") { request, context in
        await HTTPJSON.handle {
            let topic = try topicName(context)
            try await access.admin(request, context, action: "purge dead letters", topic: topic)
            let purged = try await broker.purgeDeadLetters(topic: topic)
            return HTTPJSON.response(.object([("topic", .string(topic)), ("purged", .int(purged))]))
        }
    }
    router.post("groups/:group/topics/:topic/reset") { request, context in
        await HTTPJSON.handle {
            let topic = try topicName(context)
            try await access.admin(request, context, action: "reset a group", topic: topic)
            guard let group = context.parameters.get("group") else { throw RequestError.badRequest("missing group") }
            if let problem = Limits.nameProblem(group, what: "group") { throw RequestError.badRequest(problem) }
            let body = try HTTPJSON.parse(try await HTTPJSON.body(request, limit: config.maxFrameBytes))
            guard let fromValue = body["from"] else { throw RequestError.badRequest("reset needs a from, e.g. {\"from\":{\"kind\":\"earliest\"}}") }
            let from = try StartPosition.decode(fromValue)
            let positions = try await broker.resetGroup(topic: topic, group: group, from: from)
            return HTTPJSON.response(
                .object([
                    ("topic", .string(topic)), ("group", .string(group)),
                    ("partitions", .array(positions.map { .object([("partition", .int($0.partition)), ("committed", .int($0.lastCommitted))]) })),
                ]))
        }
    }
}

/// `?group=`: a valid group name, or nil.
private func groupQuery(_ request: Request) throws -> String? {
    guard let raw = request.uri.queryParameters["group"] else { return nil }
    let group = String(raw)
    if let problem = Limits.nameProblem(group, what: "group") { throw RequestError.badRequest(problem) }
    return group
}

/// `?limit=`: 1…`max`, else `default`.
private func limitQuery(_ request: Request, default value: Int, max: Int) throws -> Int {
    guard let raw = request.uri.queryParameters["limit"] else { return value }
    guard let limit = Int(String(raw)), (1...max).contains(limit) else {
        throw RequestError.badRequest("limit must be an integer in 1...\(max)")
    }
    return limit
}

/// The request context: Hummingbird's, and the peer's address (for the audit of refusals).
struct GatewayRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: String?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress?.ipAddress
    }
}

/// Credentials on HTTP requests (SPEC §12): the `Authorization: Bearer` header.
struct HTTPAccess: Sendable {
    let gate: AuthGate?
    let broker: Broker

    /// Who the request's credential names; nil when authentication is off.
    /// - Throws: `unauthorized` (counted and audited) for a missing or refused credential.
    func principal(_ request: Request, _ context: GatewayRequestContext) async throws(RequestError) -> Principal? {
        guard let gate else { return nil }
        let header = request.headers[.authorization]
        let result: Result<Principal, RequestError>
        if let token = AuthGate.bearer(header) {
            result = await gate.authenticator.authenticate(token)
        } else {
            let message = header == nil ? "this route needs Authorization: Bearer <token>" : "Authorization must be 'Bearer <token>'"
            result = .failure(RequestError(.unauthorized, message))
        }
        switch result {
        case .success(let principal):
            return principal
        case .failure(let error):
            throw broker.refuse(error, principal: nil, address: context.remoteAddress, action: "authenticate", topic: nil)
        }
    }

    /// Refuses the request unless its credential has `admin` (or authentication is off).
    func admin(_ request: Request, _ context: GatewayRequestContext, action: String, topic: String? = nil) async throws(RequestError) {
        try broker.authorizeAdmin(try await principal(request, context), action: action, topic: topic)
    }
}

private func topicName(_ context: GatewayRequestContext) throws -> String {
    guard let topic = context.parameters.get("topic") else { throw RequestError.badRequest("missing topic") }
    if let problem = Limits.nameProblem(topic, what: "topic") { throw RequestError.badRequest(problem) }
    return topic
}
