import Testing

@testable import Models

/// The parser's fast paths (ASCII strings, short integers) agree with the general ones.
@Suite("JSON parser")
struct JSONParserTests {
    func parse(_ text: String) throws -> JSONValue {
        var parser = JSONParser(Array(text.utf8))
        return try parser.parseDocument()
    }

    @Test func integersOfEveryLength() throws {
        for text in ["0", "-0", "7", "-7", "123456789012345678", "-12345678901234567", "9223372036854775807", "-9223372036854775808"] {
            guard case .number(let double, let integer?) = try parse(text) else {
                Issue.record("\(text) is not an integer")
                continue
            }
            #expect(integer == Int64(text)!, "\(text)")
            #expect(double == Double(text)!, "\(text)")
        }
        #expect(try parse("1.5") == .number(1.5, integer: nil))
        #expect(try parse("2e3") == .number(2000, integer: 2000))
        #expect(try parse("99999999999999999999") == .number(1e20, integer: nil), "past Int64: a double only")
    }

    @Test func asciiAndOtherStrings() throws {
        #expect(try parse(#""orders.created""#) == .string("orders.created"))
        #expect(try parse(#""grüße, 東京""#) == .string("grüße, 東京"))
        #expect(try parse(#""tab\tand \u00e9""#) == .string("tab\tand é"))
        var invalid = JSONParser([0x22, 0x61, 0xFF, 0x22])
        #expect(throws: JSONError.self) { try invalid.parseDocument() }
    }
}
