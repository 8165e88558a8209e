import ArgumentParser
import Foundation
import Logging
import NIOSSL
import StreamBrokerClient

/// Where the broker is and how to reach it: shared by every command.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "The broker's WebSocket URL; an http(s):// URL works too (default: BUS_URL, else ws://127.0.0.1:7070/ws).")
    var url: String?

    @Option(help: "A token, sent as 'Authorization: Bearer' on the WebSocket upgrade and HTTP requests (default: BUS_TOKEN).")
    var token: String?

    @Option(
        name: .customLong("cacert"),
        help: ArgumentHelp(
            "A PEM file of CA certificates to trust for a wss:// or https:// broker, instead of the system's (default: BUS_CACERT).",
            valueName: "file"))
    var caCert: String?

    @Option(help: "Seconds to wait for the broker to connect or answer.")
    var timeout: Double = 10

    @Flag(help: "Indented JSON instead of one object per line.")
    var pretty = false

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be a positive number of seconds") }
        _ = try endpoints()
        _ = try tls()
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

    var resolvedCACert: String? {
        caCert ?? ProcessInfo.processInfo.environment["BUS_CACERT"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The TLS configuration for a wss:// or https:// broker: trusting the `--cacert` file's
    /// certificates, or nil (the system's trust roots).
    func tls() throws -> TLSConfiguration? {
        guard let file = resolvedCACert else { return nil }
        do {
            return try TLSConfiguration.trusting(caFile: file)
        } catch let error as StreamBrokerClientError {
            throw ValidationError("--cacert: \(error.message)")
        }
    }

    var output: Output { Output(pretty: pretty) }

    /// The HTTP API of the broker.
    func admin() throws -> AdminAPI {
        AdminAPI(base: try endpoints().http, token: resolvedToken, tls: try tls(), timeout: timeout)
    }

    /// Connects a client, runs `body` with it and closes it; the client's errors become
    /// ``CommandFailure``s.
    func withClient<T: Sendable>(
        pingInterval: Duration? = nil, _ body: @escaping @Sendable (StreamBrokerClient) async throws -> T
    ) async throws -> T {
        let webSocketURL = try endpoints().webSocket
        var logger = Logger(label: "sbctl")
        logger.logLevel = .critical
        let client = StreamBrokerClient(
            configuration: .init(url: webSocketURL, token: resolvedToken, tls: try tls(), pingInterval: pingInterval),
            logger: logger)
        // With a token: the HTTP API that says whether it is good (see `connect`).
        let probe = resolvedToken == nil ? nil : try admin()
        do {
            let url = webSocketURL
            do {
                try await withTimeout(
                    seconds: timeout,
                    failure: CommandFailure(code: "unavailable", message: "cannot connect to \(url) (--timeout \(timeout.formatted()) s)")
                ) {
                    try await Self.connect(client, refusedToken: probe)
                }
            } catch var failure as CommandFailure where failure.code == "unavailable" {
                if let reason = client.lastConnectionError { failure.message += ": \(reason)" }
                throw failure
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

    /// Waits for the client to connect. With a token (`admin` set), a failed attempt makes it
    /// ask the HTTP API once whether the token is good: a broker refuses a bad one with 401 on
    /// the WebSocket upgrade too, and retrying will not change that, so that is `unauthorized`
    /// at once rather than `unavailable` at the timeout.
    private static func connect(_ client: StreamBrokerClient, refusedToken admin: AdminAPI?) async throws {
        guard let admin else { return try await client.connect() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.connect() }
            group.addTask {
                while client.lastConnectionError == nil { try await Task.sleep(for: .milliseconds(50)) }
                do {
                    _ = try await admin.get("/stats")
                } catch let failure as CommandFailure where failure.code == "unauthorized" {
                    throw CommandFailure(code: "unauthorized", message: "the broker refused the token: \(failure.message)")
                } catch {}
                try await Task.sleep(for: .seconds(86_400))  // the token is good: wait for the connection
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}
