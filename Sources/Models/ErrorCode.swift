/// The error codes of an `ERROR` frame (SPEC §5), shared by the WebSocket and HTTP gateways.
public enum ErrorCode: String, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case unauthorized
    case forbidden
    case notFound = "not_found"
    case tooLarge = "too_large"
    case rateLimited = "rate_limited"
    case unavailable
    case `internal`

    /// The HTTP status that carries this code.
    public var httpStatus: Int {
        switch self {
        case .badRequest: 400
        case .unauthorized: 401
        case .forbidden: 403
        case .notFound: 404
        case .tooLarge: 413
        case .rateLimited: 429
        case .unavailable: 503
        case .internal: 500
        }
    }
}

/// A request the broker refuses, with the code and a message that says what is wrong.
public struct RequestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    /// The request's correlation id, when it could be read.
    public var rid: String?
    /// With `rate_limited`: when a retry may succeed.
    public var retryAfterMs: Int64?

    public init(_ code: ErrorCode, _ message: String, rid: String? = nil, retryAfterMs: Int64? = nil) {
        self.code = code
        self.message = message
        self.rid = rid
        self.retryAfterMs = retryAfterMs
    }

    public static func badRequest(_ message: String, rid: String? = nil) -> RequestError {
        RequestError(.badRequest, message, rid: rid)
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
