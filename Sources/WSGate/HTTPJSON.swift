import Hummingbird
import Models
import NIOCore
import StreamBroker

/// JSON responses and error mapping for the HTTP API, in one place.
enum HTTPJSON {
    static func response(_ bytes: [UInt8], status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    static func response(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        response(value.jsonBytes, status: status)
    }

    static func error(_ error: RequestError) -> Response {
        var fields: [(String, JSONValue)] = [("code", .string(error.code.rawValue)), ("message", .string(error.message))]
        if let retryAfterMs = error.retryAfterMs { fields.append(("retry_after_ms", .int(retryAfterMs))) }
        var response = response(JSONValue.object([("error", .object(fields))]), status: HTTPResponse.Status(code: error.code.httpStatus))
        if let retryAfterMs = error.retryAfterMs { response.headers[.retryAfter] = String((retryAfterMs + 999) / 1000) }
        if error.code == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer" }
        return response
    }

    /// Appends a JSON array of the events' envelopes, as stored (no re-encoding).
    static func appendEnvelopes(_ events: [Event], to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "["))
        for (index, event) in events.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(contentsOf: event.envelopeJSON)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    /// Runs a handler and turns every thrown error into the JSON error shape.
    static func handle(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            return self.error(RequestError(.tooLarge, "request body is larger than BUS_MAX_FRAME_BYTES"))
        } catch {
            return self.error(RequestError(error))
        }
    }

    /// Reads a body up to `limit` bytes.
    static func body(_ request: Request, limit: Int) async throws -> [UInt8] {
        let buffer = try await request.body.collect(upTo: limit)
        return Array(buffer.readableBytesView)
    }

    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        do {
            var parser = JSONParser(bytes)
            return try parser.parseDocument()
        } catch {
            throw RequestError.badRequest("body is not valid JSON: \(error)")
        }
    }
}
