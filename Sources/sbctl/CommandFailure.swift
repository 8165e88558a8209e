import Models
import StreamBrokerClient

/// A failure that ends a command with exit status 1: the broker's `ERROR` (its code and
/// message), or the broker unreachable or too slow (`unavailable`, `timeout`).
struct CommandFailure: Error, CustomStringConvertible {
    var code: String
    var message: String

    init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// The client's error: the broker's code when the broker refused, else the client's reason.
    init(_ error: StreamBrokerClientError) {
        switch error.code {
        case .broker(let code): self.init(code: code.rawValue, message: error.message)
        case .closed: self.init(code: "unavailable", message: error.message)
        case .encoding: self.init(code: "bad_request", message: error.message)
        case .alreadySubscribed: self.init(code: "bad_request", message: error.message)
        case .configuration: self.init(code: "bad_request", message: error.message)
        case .timeout: self.init(code: "timeout", message: error.message)
        }
    }

    static func timeout(_ what: String, seconds: Double) -> CommandFailure {
        CommandFailure(code: "timeout", message: "\(what) took longer than \(seconds.formatted()) s (--timeout)")
    }

    var description: String { "\(code): \(message)" }
}

/// Runs `body`, failing with `failure` when it takes longer than `seconds`.
func withTimeout<T: Sendable>(
    seconds: Double, failure: @autoclosure () -> CommandFailure, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let failure = failure()
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw failure }
        return value
    }
}
