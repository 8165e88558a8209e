import Foundation
import Models
import Testing

@Suite("JSON writer")
struct JSONWriterTests {
    private func written(_ string: String) -> String {
        var out: [UInt8] = []
        JSONWriter.writeString(string, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    private func written(_ value: some BinaryInteger) -> String {
        var out: [UInt8] = [UInt8(ascii: "[")]
        JSONWriter.writeInt(value, into: &out)
        return String(decoding: out.dropFirst(), as: UTF8.self)
    }

    @Test func stringsWithoutEscapesAreCopiedWhole() {
        #expect(written("") == #""""#)
        #expect(written("orders.created") == #""orders.created""#)
        #expect(written("héllo → 世界 🎉") == "\"héllo → 世界 🎉\"")
    }

    @Test func escapesAtTheStartTheMiddleAndTheEnd() {
        #expect(written("\"a\\b\"") == #""\"a\\b\"""#)
        #expect(written("\nline\r\tend\n") == #""\nline\r\tend\n""#)
        #expect(written("\u{00}x\u{1F}") == #""\u0000x\u001f""#)
        #expect(written("\u{7F}é") == "\"\u{7F}é\"", "DEL and non-ASCII pass through")
    }

    @Test func everyStringRoundTripsThroughTheParser() throws {
        let samples = ["", "plain", "\"", "\\", "a\u{01}b", String(repeating: "x\n", count: 300), "ünïcödé\t\"q\""]
        for sample in samples {
            var out: [UInt8] = []
            JSONWriter.writeString(sample, into: &out)
            var parser = JSONParser(out)
            #expect(try parser.parseDocument() == .string(sample))
        }
    }

    @Test func integersOfEveryWidthAndSign() {
        #expect(written(0) == "0")
        #expect(written(7) == "7")
        #expect(written(10) == "10")
        #expect(written(-1) == "-1")
        #expect(written(1_234_567_890_123 as Int64) == "1234567890123")
        #expect(written(Int64.max) == "9223372036854775807")
        #expect(written(Int64.min) == "-9223372036854775808")
        #expect(written(UInt64.max) == "18446744073709551615", "beyond Int64: the generic path")
        #expect(written(UInt8(255)) == "255")
    }
}

@Suite("Duration in milliseconds")
struct DurationMillisecondsTests {
    @Test func wholeMillisecondsTowardZero() {
        #expect(Duration.seconds(3).wholeMilliseconds == 3000)
        #expect(Duration.milliseconds(1500).wholeMilliseconds == 1500)
        #expect(Duration.microseconds(2999).wholeMilliseconds == 2)
        #expect(Duration.zero.wholeMilliseconds == 0)
    }
}
