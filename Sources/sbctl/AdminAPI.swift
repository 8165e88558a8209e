import AsyncHTTPClient
import Foundation
import Models
import NIOCore
import NIOHTTP1
import NIOSSL

/// The broker's HTTP API (SPEC §8) for the administrative commands.
struct AdminAPI: Sendable {
    var base: String
    var token: String?
    /// For an https:// broker with a private CA (`--cacert`); nil: the shared client, which
    /// trusts the system's roots.
    var tls: TLSConfiguration? = nil
    var timeout: Double

    /// The largest response read (a page of events is at most 1,000 events).
    static let maxResponseBytes = 256 << 20

    func get(_ path: String) async throws -> JSONValue {
        try await send(.GET, path, body: nil)
    }

    func post(_ path: String, _ body: JSONValue) async throws -> JSONValue {
        try await send(.POST, path, body: body.jsonBytes)
    }

    /// Sends a request; a non-2xx answer becomes a ``CommandFailure`` with the broker's error code.
    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?) async throws -> JSONValue {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let status: UInt
        let bytes: [UInt8]
        do {
            (status, bytes) = try await withHTTPClient { client in
                let response = try await client.execute(request, timeout: .milliseconds(Int64(timeout * 1000)))
                return (response.status.code, Array(buffer: try await response.body.collect(upTo: Self.maxResponseBytes)))
            }
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            throw CommandFailure.timeout("\(method.rawValue) \(path)", seconds: timeout)
        } catch {
            throw CommandFailure(code: "unavailable", message: "\(method.rawValue) \(base)\(path): \(error)")
        }
        var parser = JSONParser(bytes)
        let value = try? parser.parseDocument()
        guard (200..<300).contains(status) else {
            if case .string(let code)? = value?["error"]?["code"], case .string(let message)? = value?["error"]?["message"] {
                throw CommandFailure(code: code, message: message)
            }
            throw CommandFailure(code: "http_\(status)", message: "\(method.rawValue) \(path) answered \(status)")
        }
        guard let value else {
            throw CommandFailure(code: "internal", message: "\(method.rawValue) \(path) answered something that is not JSON")
        }
        return value
    }
}

extension AdminAPI {
    /// Runs `body` with the shared client, or with a client of its own trusting `tls`'s roots
    /// (shut down after).
    private func withHTTPClient<T: Sendable>(_ body: (HTTPClient) async throws -> T) async throws -> T {
        guard let tls else { return try await body(HTTPClient.shared) }
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}

extension JSONValue {
    /// The elements of an array member, or none.
    func array(_ key: String) -> [JSONValue] {
        if case .array(let items)? = self[key] { return items }
        return []
    }

    var int64: Int64? {
        if case .number(_, let integer) = self { return integer }
        return nil
    }

    var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }
}
