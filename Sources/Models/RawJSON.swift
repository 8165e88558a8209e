/// The bytes of one complete, validated JSON value, passed through without re-encoding.
public struct RawJSON: Sendable, Equatable, Hashable {
    public let bytes: [UInt8]

    /// Wraps bytes the caller knows to be one valid JSON value (e.g. read back from the store).
    public init(trusted bytes: [UInt8]) { self.bytes = bytes }

    /// Validates that `bytes` hold exactly one JSON value (surrounding whitespace allowed).
    public init(validating bytes: [UInt8]) throws(JSONError) {
        var parser = JSONParser(bytes)
        parser.skipWhitespace()
        let start = parser.index
        try parser.skipValue()
        let end = parser.index
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw JSONError(message: "unexpected data after the JSON value", offset: parser.index) }
        self.bytes = Array(bytes[start..<end])
    }

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    /// A payload given as JSON text, refused with `bad_request` when it is not valid JSON.
    public static func payload(_ text: String) throws(RequestError) -> RawJSON {
        do {
            return try RawJSON(validating: Array(text.utf8))
        } catch {
            throw .badRequest("payload is not valid JSON: \(error)")
        }
    }

    /// Parses the bytes into a ``JSONValue`` (for tooling and tests, not the hot path).
    public func parsed() throws(JSONError) -> JSONValue {
        var parser = JSONParser(bytes)
        return try parser.parseDocument()
    }
}
