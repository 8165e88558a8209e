import Models
import Testing

@Suite("MESSAGE frames")
struct MessageFrameTests {
    /// The frame as the object writer builds it, member by member: what the encoder must match.
    private func expected(topic: String, partition: Int, group: String?, offset: Int64, attempt: Int, envelope: [UInt8]) -> [UInt8] {
        var w = JSONObjectWriter()
        w.string("type", "MESSAGE")
        w.string("topic", topic)
        w.int("partition", partition)
        w.optionalString("group", group, nullIfMissing: true)
        w.int("offset", offset)
        w.int("attempt", attempt)
        w.raw("envelope", envelope)
        return w.finish()
    }

    @Test(arguments: [Int64(0), 9, 10, 99, 100, 12_345, 999_999_999, Int64.max, -1, -10, Int64.min + 1])
    func encodesEveryNumberInFull(offset: Int64) throws {
        let envelope = Array(#"{"id":"x","payload":{"n":1}}"#.utf8)
        let template = MessageFrame.Template(topic: "orders.created", group: "billing")
        let frame = MessageFrame(template, partition: 7, offset: offset, attempt: 10, envelope: envelope)
        let bytes = frame.bytes
        #expect(bytes == expected(topic: "orders.created", partition: 7, group: "billing", offset: offset, attempt: 10, envelope: envelope))
        #expect(frame.count == bytes.count)
        var parser = JSONParser(bytes)
        guard case .object(let members) = try parser.parseDocument() else {
            Issue.record("not an object")
            return
        }
        #expect(members.first { $0.0 == "offset" }?.1 == .int(offset))
    }

    @Test func anEphemeralFrameHasANullGroupAndEscapedNamesStayEscaped() {
        let envelope = Array(#"{}"#.utf8)
        let ephemeral = MessageFrame(.init(topic: "t", group: nil), partition: 0, offset: 1, attempt: 1, envelope: envelope)
        #expect(String(decoding: ephemeral.bytes, as: UTF8.self).contains(#""group":null,"offset":1"#))
        #expect(ephemeral.count == ephemeral.bytes.count)
        // Names are checked before they get here; the encoder escapes anyway.
        let odd = MessageFrame(.init(topic: "a\"b", group: "g\\\n"), partition: 12, offset: 3, attempt: 2, envelope: envelope)
        #expect(odd.bytes == expected(topic: "a\"b", partition: 12, group: "g\\\n", offset: 3, attempt: 2, envelope: envelope))
        #expect(odd.count == odd.bytes.count)
    }

    @Test func theArrayEncoderIsTheFrameEncoder() {
        let envelope = Array(#"{"id":"e"}"#.utf8)
        let array = ServerFrame.message(topic: "t", partition: 1, group: "g", offset: 42, attempt: 3, envelope: envelope)
        #expect(array == expected(topic: "t", partition: 1, group: "g", offset: 42, attempt: 3, envelope: envelope))
    }

    @Test func encodingIntoABufferWritesCountBytesAndNoMore() {
        let frame = MessageFrame(.init(topic: "t", group: "g"), partition: 0, offset: 5, attempt: 1, envelope: Array("{}".utf8))
        var buffer = [UInt8](repeating: 0xEE, count: frame.count + 4)
        buffer.withUnsafeMutableBytes { frame.encode(into: $0) }
        #expect(Array(buffer.prefix(frame.count)) == frame.bytes)
        #expect(Array(buffer.suffix(4)) == [0xEE, 0xEE, 0xEE, 0xEE])
    }
}
