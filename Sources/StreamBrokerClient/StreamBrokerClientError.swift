import Models

/// An error of the Swift client: a broker's `ERROR` frame (with the broker's code and message),
/// or a failure of the client itself.
///
/// ```swift
/// do {
///     try await client.publish(topic: "bad topic", payload: RawJSON(trusted: Array("1".utf8)))
/// } catch let error as StreamBrokerClientError where error.code == .broker(.badRequest) {
///     print("refused:", error.message)
/// }
/// ```
public struct StreamBrokerClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong.
    public enum Code: Sendable, Equatable {
        /// The broker answered with an `ERROR` frame carrying this code.
        case broker(ErrorCode)
        /// The client was closed before the request completed.
        case closed
        /// The payload could not be encoded as JSON.
        case encoding
        /// This client already has a subscription to the same topic and group.
        case alreadySubscribed
        /// A setting cannot be used (a CA file that cannot be read or holds no certificate).
        case configuration
        /// The broker did not answer in time (a connection attempt longer than `connectTimeout`).
        case timeout
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The broker's error code, when the broker refused the request.
    public var brokerCode: ErrorCode? {
        if case .broker(let code) = code { return code }
        return nil
    }

    public var description: String {
        switch code {
        case .broker(let code): "\(code.rawValue): \(message)"
        case .closed: "closed: \(message)"
        case .encoding: "encoding: \(message)"
        case .alreadySubscribed: "already subscribed: \(message)"
        case .configuration: "configuration: \(message)"
        case .timeout: "timeout: \(message)"
        }
    }
}

extension StreamBrokerClientError {
    /// What every request gets once the client is closed.
    static let closedClient = StreamBrokerClientError(.closed, "the client is closed")
}
