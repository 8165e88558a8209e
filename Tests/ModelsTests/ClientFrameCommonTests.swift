import Testing

@testable import Models

/// The PUBLISH/ACK fast path of `ClientFrame.decode` must read exactly what the general decoder
/// reads, and leave every frame it cannot read the same way (errors included) to it.
@Suite("Client frame decoding: the common frames' fast path")
struct ClientFrameCommonTests {
    static let longRid = String(repeating: "r", count: Limits.maxRidBytes + 5)

    /// Frames the fast path reads itself.
    static let common: [String] = [
        #"{"type":"PUBLISH","topic":"bench.w1","payload":{"t":1,"p":"xx"},"id":"0190d6f0-0000-7000-8000-000000000001","rid":"p1"}"#,
        #"{"type":"PUBLISH","topic":"t","payload":[1, 2.5, null]}"#,
        #"{ "payload" : "s" , "topic" : "t" , "type" : "PUBLISH" }"#,
        #"{"type":"PUBLISH","topic":"t","key":"k\u00e9\n","headers":{"ct":"json","b":"x"},"payload":1,"id":"x1","rid":"r1"}"#,
        #"{"type":"PUBLISH","topic":"t","payload":{},"rid":""# + longRid + #""}"#,
        #"{"type":"ACK","topic":"t","partition":2,"group":"g","offset":9}"#,
        #"{"type":"ACK","topic":"t","partition":0,"offset":1,"rid":"a1"}"#,
        #"{"offset":12345678901,"partition":1023,"group":"g-1.x","topic":"orders.created","type":"ACK"}"#,
    ]

    /// Frames the fast path leaves to the general decoder: some are valid, some are refused.
    static let uncommon: [String] = [
        #"{"type":"NACK","topic":"t","partition":0,"group":"g","offset":9}"#,
        #"{"type":"SUBSCRIBE","topic":"t","group":"g"}"#,
        #"{"type":"FLOW","credits":5}"#,
        #"{"type":"PUBLISH","topic":"t","topic":"u","payload":1}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"payload":2}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"group":"g"}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"extra":true}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"key":null}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"headers":null}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"headers":{"a":1}}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"rid":7}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1,"id":""}"#,
        #"{"type":"PUBLISH","topic":"bad topic","payload":1}"#,
        #"{"type":"PUBLISH","topic":"t"}"#,
        #"{"type":"PUBLISH","payload":1}"#,
        #"{"\u0074ype":"PUBLISH","topic":"t","payload":1}"#,
        #"{"type":"PUBL\u0049SH","topic":"t","payload":1}"#,
        #"{"type":"PUBLISH","topic":"t","payload":{"a":}}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1} x"#,
        #"{"type":7,"topic":"t","payload":1}"#,
        #"{"type":"ACK","topic":"t","partition":-1,"group":"g","offset":9}"#,
        #"{"type":"ACK","topic":"t","partition":1024,"group":"g","offset":9}"#,
        #"{"type":"ACK","topic":"t","partition":1.5,"group":"g","offset":9}"#,
        #"{"type":"ACK","topic":"t","partition":0,"group":"g","offset":0}"#,
        #"{"type":"ACK","topic":"t","partition":0,"group":"g g","offset":3}"#,
        #"{"type":"ACK","topic":"t","partition":0,"group":"g"}"#,
        #"{"type":"ACK","topic":"t","partition":0,"group":"g","offset":3,"payload":1}"#,
        #"{"type":"ACK","topic":"t","partition":0,"group":null,"offset":3}"#,
        #"{"type":"PUBLISH","topic":"t","payload":1"#,
        #"["PUBLISH"]"#,
        #"{}"#,
        "",
    ]

    static func general(_ text: String) -> Result<ClientFrame, RequestError> {
        Result { () throws(RequestError) in try ClientFrame.decodeGeneral(Array(text.utf8)) }
    }

    static func decoded(_ text: String) -> Result<ClientFrame, RequestError> {
        Result { () throws(RequestError) in try ClientFrame.decode(Array(text.utf8)) }
    }

    @Test(arguments: common)
    func commonFramesTakeTheFastPathAndReadTheSame(_ text: String) throws {
        let fast = try #require(ClientFrame.decodeCommon(Array(text.utf8)))
        #expect(Self.general(text) == .success(fast))
    }

    @Test(arguments: uncommon)
    func otherFramesGoTheGeneralWay(_ text: String) {
        #expect(ClientFrame.decodeCommon(Array(text.utf8)) == nil)
        #expect(Self.decoded(text) == Self.general(text))
    }

    @Test func aLongRidIsCutAsTheGeneralDecoderCutsIt() throws {
        let frame = try #require(ClientFrame.decodeCommon(Array(Self.common[4].utf8)))
        #expect(frame.rid?.utf8.count == Limits.maxRidBytes)
    }
}
