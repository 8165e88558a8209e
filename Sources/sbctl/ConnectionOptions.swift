import ArgumentParser
import Foundation
import Logging
import StreamBrokerClient

/// Where the broker is and how to reach it: shared by every command.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The broker's WebSocket URL; an http(s):// URL works too (default: BUS_URL, else ws://127.0.0.1:7070/ws).")
    var url: String?

    @Option(help: "A token, sent as 'Authorization: Bearer' (default: BUS_TOKEN).")
    var token: String?

    @Option(help: "Seconds to wait for the broker to connect or answer.")
    var timeout: Double = 10

    @Flag(help: "Indented JSON instead of one object per line.")
    var pretty = false

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be a positive number of seconds") }
        _ = try endpoints()
    }

    /// The WebSocket URL and the HTTP base URL (scheme, host and port) of the broker.
    func endpoints() throws -> (webSocket: String, http: String) {
        let raw = url ?? ProcessInfo.processInfo.environment["BUS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "ws://127.0.0.1:7070/ws"
        guard let components = URLComponents(string: raw), let scheme = components.scheme?.lowercased(),
            let host = components.host, !host.isEmpty
        else { throw ValidationError("'\(raw)' is not a URL like ws://host:7070/ws") }
        let secure: Bool
        switch scheme {
        case "ws", "http": secure = false
        case "wss", "https": secure = true
        default: throw ValidationError("'\(raw)': the scheme must be ws, wss, http or https")
        }
        let authority = components.port.map { "\(host):\($0)" } ?? host
        let path = scheme.hasPrefix("ws") && !components.path.isEmpty ? components.path : "/ws"
        return ("\(secure ? "wss" : "ws")://\(authority)\(path)", "\(secure ? "https" : "http")://\(authority)")
    }

    var resolvedToken: String? {
        token ?? ProcessInfo.processInfo.environment["BUS_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
    }

    var output: Output { Output(pretty: pretty) }

    /// The HTTP API of the broker.
    func admin() throws -> AdminAPI {
        AdminAPI(base: try endpoints().http, token: resolvedToken, timeout: timeout)
    }

    /// Connects a client, runs `body` with it and closes it; the client's errors become
    /// ``CommandFailure``s.
    func withClient<T: Sendable>(
        pingInterval: Duration? = nil, _ body: @escaping @Sendable (StreamBrokerClient) async throws -> T
    ) async throws -> T {
        var logger = Logger(label: "sbctl")
        logger.logLevel = .critical
        let client = StreamBrokerClient(
            configuration: .init(url: try endpoints().webSocket, token: resolvedToken, pingInterval: pingInterval), logger: logger)
        do {
            let url = try endpoints().webSocket
            try await withTimeout(
                seconds: timeout,
                failure: CommandFailure(code: "unavailable", message: "cannot connect to \(url) (--timeout \(timeout.formatted()) s)")
            ) {
                try await client.connect()
            }
            let result = try await body(client)
            await client.close()
            return result
        } catch let error as StreamBrokerClientError {
            await client.close()
            throw CommandFailure(error)
        } catch {
            await client.close()
            throw error
        }
    }
}
