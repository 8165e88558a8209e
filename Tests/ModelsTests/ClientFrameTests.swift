import Models
import Testing

@Suite("Client frame decoding")
struct ClientFrameTests {
    func decode(_ text: String) throws(RequestError) -> ClientFrame {
        try ClientFrame.decode(Array(text.utf8))
    }

    func error(_ text: String) -> RequestError? {
        do {
            _ = try decode(text)
            return nil
        } catch {
            return error
        }
    }

    @Test func publishKeepsPayloadBytesAsSent() throws {
        let payload = #"{ "n" : 1, "s":"\u00e9\n", "a":[1.50, true, null] }"#
        let frame = try decode(
            #"{"type":"PUBLISH","topic":"orders.created","key":"k","headers":{"ct":"json"},"payload":"# + payload + #","id":"x1","rid":"r1"}"#)
        guard case .publish(let publish) = frame else {
            Issue.record("not a publish")
            return
        }
        #expect(publish.payload.string == payload)
        #expect(publish.topic == "orders.created")
        #expect(publish.key == "k")
        #expect(publish.headers == Headers([("ct", "json")]))
        #expect(publish.id == "x1")
        #expect(publish.rid == "r1")
    }

    @Test func subscribeWithEverything() throws {
        let frame = try decode(
            #"{"type":"SUBSCRIBE","topic":"t","group":"g","from":{"kind":"timestamp","value":1723140000000},"max_inflight":4,"ack_timeout_ms":500,"filter":{"key":"k","header":["ct","json"]},"reset":true}"#
        )
        #expect(
            frame
                == .subscribe(
                    SubscribeRequest(
                        topic: "t", group: "g", from: .timestamp(1_723_140_000_000), maxInflight: 4, ackTimeoutMs: 500,
                        filter: SubscriptionFilter(key: "k", header: .init(name: "ct", value: "json")), reset: true)))
    }

    @Test func ephemeralSubscribeHasNoGroup() throws {
        #expect(try decode(#"{"type":"SUBSCRIBE","topic":"t","group":null}"#) == .subscribe(SubscribeRequest(topic: "t", group: nil)))
    }

    @Test func ackNackFlow() throws {
        #expect(
            try decode(#"{"type":"ACK","topic":"t","partition":2,"group":"g","offset":9}"#)
                == .ack(AckRequest(topic: "t", partition: 2, group: "g", offset: 9)))
        #expect(
            try decode(#"{"type":"NACK","topic":"t","partition":0,"group":"g","offset":9,"reason":"db","delay_ms":500}"#)
                == .nack(AckRequest(topic: "t", partition: 0, group: "g", offset: 9), reason: "db", delayMs: 500))
        #expect(try decode(#"{"type":"FLOW","topic":"t","group":"g","credits":50}"#) == .flow(topic: "t", group: "g", credits: 50, rid: nil))
    }

    /// The sketch's FLOW carries no topic: it is for every subscription of the connection.
    @Test func flowWithoutTopic() throws {
        #expect(try decode(#"{"type":"FLOW","credits":50}"#) == .flow(topic: nil, group: nil, credits: 50, rid: nil))
        #expect(error(#"{"type":"FLOW","group":"g","credits":5,"rid":"r"}"#)?.message.contains("needs its topic") == true)
    }

    /// The sketch's recipe subscribes with `from=offset(0)`: accepted (it starts at the earliest).
    @Test func fromOffsetZero() throws {
        #expect(try StartPosition.decode(.object([("kind", .string("offset")), ("value", .number(0, integer: 0))])) == .offset(0))
        #expect(throws: RequestError.self) {
            try StartPosition.decode(.object([("kind", .string("offset")), ("value", .number(-1, integer: -1))]))
        }
    }

    @Test(arguments: [
        ("not json", "frame is not valid JSON"),
        ("[1,2]", "must be a JSON object, not an array"),
        (#""x""#, "must be a JSON object, not a string"),
        (#"{"rid":"r"}"#, "frame needs a type"),
        (#"{"type":"EXPLODE","rid":"r"}"#, "unknown frame type 'EXPLODE'"),
        (#"{"type":"PUBLISH","payload":1,"rid":"r"}"#, "PUBLISH needs a topic"),
        (#"{"type":"PUBLISH","topic":"t","rid":"r"}"#, "PUBLISH needs a payload"),
        (#"{"type":"PUBLISH","topic":"bad topic!","payload":1,"rid":"r"}"#, "may only hold letters"),
        (#"{"type":"PUBLISH","topic":"t","payload":1,"headers":{"a":1},"rid":"r"}"#, "header 'a' must be a string"),
        (#"{"type":"SUBSCRIBE","topic":"t","max_inflight":-1,"rid":"r"}"#, "max_inflight must be at least 1"),
        (#"{"type":"SUBSCRIBE","topic":"t","from":{"kind":"offset"},"rid":"r"}"#, "from kind offset needs"),
        (#"{"type":"SUBSCRIBE","topic":"t","from":{"kind":"nope"},"rid":"r"}"#, "from kind must be"),
        (#"{"type":"ACK","topic":"t","partition":0,"group":"g","offset":1.5,"rid":"r"}"#, "offset must be an integer"),
        (#"{"type":"ACK","topic":"t","partition":0,"group":"g","rid":"r"}"#, "ACK needs offset"),
        (#"{"type":"FLOW","topic":"t","credits":-3,"rid":"r"}"#, "credits must be at least 0"),
    ])
    func badFramesSayWhatIsWrong(frame: String, message: String) {
        let failure = error(frame)
        #expect(failure?.code == .badRequest)
        #expect(failure?.message.contains(message) == true, "\(failure?.message ?? "no error")")
        if frame.contains(#""rid":"r""#) { #expect(failure?.rid == "r") }
    }

    @Test func namesAreLimited() {
        #expect(Limits.nameProblem(String(repeating: "a", count: 200), what: "topic") == nil)
        #expect(Limits.nameProblem(String(repeating: "a", count: 201), what: "topic") != nil)
        #expect(Limits.nameProblem("", what: "topic") != nil)
        #expect(Limits.nameProblem("a.b_c-D9", what: "topic") == nil)
        #expect(Limits.nameProblem("é", what: "topic") != nil)
        for bad in ["a b", "a/b", "a:b", "a\u{0}", "~", "a@b"] {
            #expect(Limits.nameProblem(bad, what: "topic")?.contains("may only hold") == true, "\(bad)")
        }
    }

    @Test func longRidsAreCutToTheLimit() throws {
        let short = String(repeating: "r", count: Limits.maxRidBytes)
        let long = String(repeating: "r", count: Limits.maxRidBytes + 50)
        for (rid, expected) in [(short, short), (long, short)] {
            let frame = try ClientFrame.decode(Array(#"{"type":"FLOW","topic":"t","credits":1,"rid":"\#(rid)"}"#.utf8))
            #expect(frame.rid == expected)
        }
    }

    @Test func httpEventBody() throws {
        let request = try PublishRequest.decodeHTTP(Array(#"{"key":"k","payload":[1, 2]}"#.utf8), topic: "t")
        #expect(request.payload.string == "[1, 2]")
        #expect(throws: RequestError.self) { try PublishRequest.decodeHTTP(Array(#"{"key":"k"}"#.utf8), topic: "t") }
    }
}

@Suite("Partitioner")
struct PartitionerTests {
    // Expected values computed with JavaScript's `(h << 5) - h + c | 0` over UTF-16 code units.
    @Test(arguments: [
        ("cust-7", -1_349_090_499, 1),
        ("", 0, 0),
        ("a", 97, 6),
        ("ключ-7", 1_946_026_980, 2),
        ("顧客", 1_232_923, 6),
        ("🚀x", 54_963_957, 6),
        ("polygenelubricants", Int(Int32.min), 2),
    ])
    func matchesTheJavaScriptHash(key: String, hash: Int, partition: Int) {
        #expect(Int(Partitioner.hash(key)) == hash)
        #expect(Partitioner.partition(forKey: key, partitions: 7) == partition)
    }
}

@Suite("JSON")
struct JSONTests {
    @Test func rejectsInvalidDocuments() {
        for text in ["{", "[1,]", "{\"a\" 1}", "01", "1.", "\"\\x\"", "tru", "{\"a\":1}x", "\"\u{01}\""] {
            #expect(throws: JSONError.self, "\(text)") { try RawJSON(validating: Array(text.utf8)) }
        }
    }

    @Test func parsesEscapesAndSurrogates() throws {
        var parser = JSONParser(Array(#"{"s":"a\"b\\c\ud83d\ude80\u00e9"}"#.utf8))
        let value = try parser.parseDocument()
        #expect(value["s"] == .string("a\"b\\c🚀é"))
    }

    @Test func writesStringsSafely() {
        var out: [UInt8] = []
        JSONWriter.writeString("a\"\n\u{01}é", into: &out)
        #expect(String(decoding: out, as: UTF8.self) == #""a\"\n\u0001é""#)
    }
}
