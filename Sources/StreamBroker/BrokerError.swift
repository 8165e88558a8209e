import Models

/// The one error type of the broker library.
public struct BrokerError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure; the gateway maps each to an `ERROR` code and an HTTP status.
    public enum Code: Sendable, Equatable {
        /// The store cannot be reached or failed to write.
        case unavailable
        /// A commit carried a lease epoch that is no longer current.
        case fenced
        case notFound
        case badRequest
        case `internal`
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }

    public var debugDescription: String {
        if let underlying { return "\(code): \(message) (\(String(reflecting: underlying)))" }
        return "\(code): \(message)"
    }

    /// The wire error this maps to (SPEC §5).
    public var errorCode: ErrorCode {
        switch code {
        case .unavailable: .unavailable
        case .fenced: .unavailable
        case .notFound: .notFound
        case .badRequest: .badRequest
        case .internal: .internal
        }
    }
}

extension RequestError {
    /// Maps any error thrown by the broker to what a client is told.
    public init(_ error: any Error, rid: String? = nil) {
        if let request = error as? RequestError {
            self = request
            self.rid = rid ?? request.rid
        } else if let broker = error as? BrokerError {
            self.init(broker.errorCode, broker.message, rid: rid)
        } else {
            self.init(.internal, "internal error", rid: rid)
        }
    }
}
