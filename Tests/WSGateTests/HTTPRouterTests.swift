import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Models
import Prometheus
import StreamBroker
import Testing

@testable import WSGate

/// The HTTP API of SPEC §8, in process: the real router and a broker on an in-memory SQLite
/// store, no socket. (WebSocket behaviour and multi-process cases are in `Tests/e2e`.)
@Suite("HTTP API (router)")
struct HTTPRouterTests {
    /// Runs `body` against a fresh gateway and broker.
    func withGateway(maxFrameBytes: Int = 4096, _ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let store = SQLiteStore(location: .memory, durability: .normal, logger: Logger(label: "test.store"))
        let broker = Broker(store: store, logger: Logger(label: "test.broker"))
        try await broker.openStore()
        var config = GatewayConfig()
        config.maxFrameBytes = maxFrameBytes
        let app = buildApplication(
            config: config, broker: broker, registry: PrometheusCollectorRegistry(), logger: Logger(label: "test.gateway"),
            services: [broker])
        try await app.test(.router) { client in try await body(client) }
    }

    /// The response body as JSON (a test issue, and `null`, when it is not JSON).
    func json(_ response: TestResponse) -> JSONValue {
        var parser = JSONParser(Array(response.body.readableBytesView))
        do {
            return try parser.parseDocument()
        } catch {
            Issue.record("response is not JSON: \(error)")
            return .null
        }
    }

    func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    @Test func healthAndReadiness() async throws {
        try await withGateway { client in
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(json(response)["status"] == .string("ok"))
            }
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(json(response)["ready"] == .bool(true))
            }
        }
    }

    @Test func topicsAreCreatedListedAndOnlyGrow() async throws {
        try await withGateway { client in
            try await client.execute(uri: "/topics", method: .post, body: body(#"{"topic":"orders","partitions":4,"maxAttempts":3}"#)) {
                #expect($0.status == .ok)
                #expect(json($0)["partitions"] == .number(4, integer: 4))
            }
            try await client.execute(uri: "/topics", method: .get) { response in
                guard case .array(let topics)? = json(response)["topics"] else {
                    Issue.record("no topics array")
                    return
                }
                // The broker's own topics (the audit record of this change) may be listed too.
                let orders = topics.filter { $0["topic"] == .string("orders") }
                #expect(orders.count == 1)
                #expect(orders.first?["maxAttempts"] == .number(3, integer: 3))
                let allowed: Set<String> = ["orders", Broker.auditTopic, Broker.metricsTopic]
                #expect(topics.allSatisfy { if case .string(let name)? = $0["topic"] { allowed.contains(name) } else { false } })
            }
            try await client.execute(uri: "/topics/orders", method: .get) { response in
                #expect(response.status == .ok)
                guard case .array(let partitions)? = json(response)["partitions"] else {
                    Issue.record("no partitions")
                    return
                }
                #expect(partitions.count == 4)
            }
            try await client.execute(uri: "/topics", method: .post, body: body(#"{"topic":"orders","partitions":2}"#)) { response in
                #expect(response.status == .badRequest)
                #expect(
                    json(response)["error"]?["message"].flatMap { if case .string(let m) = $0 { m } else { nil } }?.contains("can only grow") == true)
            }
        }
    }

    @Test func unknownTopicsAreNotFound() async throws {
        try await withGateway { client in
            for uri in ["/topics/nope", "/topics/nope/offsets", "/topics/nope/events"] {
                try await client.execute(uri: uri, method: .get) { response in
                    #expect(response.status == .notFound, "\(uri)")
                    #expect(json(response)["error"]?["code"] == .string("not_found"))
                }
            }
        }
    }

    @Test func publishReadAndDuplicate() async throws {
        try await withGateway { client in
            for i in 1...3 {
                try await client.execute(uri: "/topics/t1/events", method: .post, body: body(#"{"key":"k","payload":{"i":\#(i)}}"#)) {
                    #expect($0.status == .ok)
                    #expect(json($0)["offset"] == .number(Double(i), integer: Int64(i)))
                }
            }
            let first = #"{"payload":1,"id":"same"}"#
            try await client.execute(uri: "/topics/t1/events", method: .post, body: body(first)) {
                #expect(json($0)["duplicate"] == .bool(false))
            }
            try await client.execute(uri: "/topics/t1/events", method: .post, body: body(first)) { response in
                #expect(json(response)["duplicate"] == .bool(true))
                #expect(json(response)["offset"] == .number(4, integer: 4))
            }
            try await client.execute(uri: "/topics/t1/events?partition=0&from=2&limit=2", method: .get) { response in
                guard case .array(let events)? = json(response)["events"] else {
                    Issue.record("no events")
                    return
                }
                #expect(events.map { $0["offset"] } == [.number(2, integer: 2), .number(3, integer: 3)])
                #expect(events.first?["payload"]?["i"] == .number(2, integer: 2))
            }
        }
    }

    @Test(arguments: [
        (#"{"key":"k"}"#, "needs a payload"),
        (#"{"payload":1,"id":""}"#, "id must be"),
        (#"{"payload":1,"headers":{"a":1}}"#, "must be a string"),
        (#"not json"#, "body must be a JSON object"),
    ])
    func badPublishBodiesSayWhatIsWrong(text: String, message: String) async throws {
        try await withGateway { client in
            try await client.execute(uri: "/topics/t2/events", method: .post, body: body(text)) { response in
                #expect(response.status == .badRequest)
                let error = json(response)["error"]
                #expect(error?["code"] == .string("bad_request"))
                if case .string(let text)? = error?["message"] { #expect(text.contains(message), "\(text)") } else { Issue.record("no message") }
            }
            // Nothing was stored.
            try await client.execute(uri: "/topics/t2/events", method: .get) { #expect($0.status == .notFound) }
        }
    }

    @Test func oversizeBodiesAre413() async throws {
        try await withGateway(maxFrameBytes: 1024) { client in
            let big = #"{"payload":""# + String(repeating: "x", count: 2000) + #""}"#
            try await client.execute(uri: "/topics/t3/events", method: .post, body: body(big)) { response in
                #expect(response.status == .contentTooLarge)
                #expect(json(response)["error"]?["code"] == .string("too_large"))
            }
        }
    }

    @Test func badTopicNamesAreRefused() async throws {
        try await withGateway { client in
            try await client.execute(uri: "/topics/bad%20name/events", method: .post, body: body(#"{"payload":1}"#)) { response in
                #expect(response.status == .badRequest)
            }
        }
    }

    @Test func groupResetMovesTheCommittedPosition() async throws {
        try await withGateway { client in
            for _ in 1...3 {
                try await client.execute(uri: "/topics/t4/events", method: .post, body: body(#"{"payload":1}"#)) { #expect($0.status == .ok) }
            }
            try await client.execute(uri: "/groups/g/topics/t4/reset", method: .post, body: body(#"{"from":{"kind":"offset","value":3}}"#)) {
                response in
                #expect(response.status == .ok)
                guard case .array(let partitions)? = json(response)["partitions"] else {
                    Issue.record("no partitions")
                    return
                }
                #expect(partitions.first?["committed"] == .number(2, integer: 2))
            }
            try await client.execute(uri: "/topics/t4/offsets", method: .get) { response in
                guard case .array(let groups)? = json(response)["groups"] else {
                    Issue.record("no groups")
                    return
                }
                #expect(groups.first?["group"] == .string("g"))
            }
            try await client.execute(uri: "/groups/g/topics/t4/reset", method: .post, body: body(#"{}"#)) {
                #expect($0.status == .badRequest)
            }
        }
    }

    @Test func statsAndMetricsAnswer() async throws {
        try await withGateway { client in
            try await client.execute(uri: "/topics/t5/events", method: .post, body: body(#"{"payload":1}"#)) { #expect($0.status == .ok) }
            try await client.execute(uri: "/stats", method: .get) { response in
                #expect(response.status == .ok)
                let stats = json(response)
                #expect(stats["replica"] != nil)
                #expect(stats["topics"] != nil)
            }
            try await client.execute(uri: "/metrics", method: .get) { #expect($0.status == .ok) }
        }
    }
}
