import Crypto
import Foundation
import Models
import NIOSSL
import Testing

@testable import StreamBrokerClient

/// The client's token and TLS settings against a real broker with `BUS_AUTH=token` and
/// `BUS_TLS_CERT_FILE` (SPEC §12, §13). The CA and the broker's certificate are made for each
/// test with the `openssl` command.
@Suite("Client credentials and TLS", .serialized)
struct CredentialsTests {
    static let token = "billing-secret-token-0123456789"

    /// A CA, a certificate it signed (for localhost and 127.0.0.1 unless told), and a tokens file.
    struct Files {
        let directory: URL
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        var ca: String { path("ca.pem") }
        var cert: String { path("server.pem") }
        var key: String { path("server.key") }
        var tokens: String { path("tokens.json") }

        static func make(subjectAltName: String = "DNS:localhost,IP:127.0.0.1") throws -> Files {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sbclient-tls-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let files = Files(directory: directory)
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            try openssl(
                ["req", "-x509"] + ec + [
                    "-days", "1", "-subj", "/CN=client test CA", "-keyout", files.path("ca.key"), "-out", files.ca,
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                ])
            try openssl(["req"] + ec + ["-subj", "/CN=localhost", "-keyout", files.key, "-out", files.path("server.csr")])
            try Data("subjectAltName=\(subjectAltName)\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n".utf8)
                .write(to: directory.appendingPathComponent("ext.cnf"))
            try openssl([
                "x509", "-req", "-in", files.path("server.csr"), "-CA", files.ca, "-CAkey", files.path("ca.key"), "-CAcreateserial",
                "-days", "1", "-out", files.cert, "-extfile", files.path("ext.cnf"),
            ])
            let hash = SHA256.hash(data: Array(CredentialsTests.token.utf8)).map { String(format: "%02x", $0) }.joined()
            let tokens = #"{"tokens":[{"name":"billing","sha256":"\#(hash)","publish":["orders.>"],"subscribe":["orders.>"]}]}"#
            try Data(tokens.utf8).write(to: directory.appendingPathComponent("tokens.json"))
            return files
        }

        func remove() { try? FileManager.default.removeItem(at: directory) }

        static func openssl(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["openssl"] + arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw BrokerProcess.Failure(description: "openssl \(arguments.joined(separator: " ")) failed")
            }
        }
    }

    static func client(
        _ url: String, token: String? = nil, tls: TLSConfiguration? = nil, connectTimeout: Duration = .seconds(10)
    ) -> StreamBrokerClient {
        StreamBrokerClient(
            configuration: .init(
                url: url, token: token, tls: tls, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(200),
                connectTimeout: connectTimeout))
    }

    /// Waits for `connect()` for at most `seconds`; false when it did not connect by then.
    static func connects(_ client: StreamBrokerClient, within seconds: Int) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await client.connect()
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(seconds))
                return false
            }
            defer { group.cancelAll() }
            return try await group.next() ?? false
        }
    }

    @Test func wssWithATokenPublishesAndSubscribes() async throws {
        let files = try Files.make()
        defer { files.remove() }
        let broker = try await BrokerProcess.started([
            "BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": files.key, "BUS_AUTH": "token", "BUS_TOKENS_FILE": files.tokens,
        ])
        defer { broker.stop() }
        let client = Self.client("wss://localhost:\(broker.port)/ws", token: Self.token, tls: try .trusting(caFile: files.ca))
        try await client.connect()
        let published = try await client.publish(topic: "orders.tls", payload: Order(n: 1))
        #expect(published.offset == 1)
        let messages = try await take(1, from: try await client.subscribe(topic: "orders.tls", group: "billing", from: .earliest))
        #expect(try messages.first?.decode(Order.self) == Order(n: 1))
        #expect(messages.first?.headers?["x-bus-principal"] == "billing")
        // Outside the token's patterns: the broker's refusal.
        await #expect {
            try await client.publish(topic: "payments", payload: Order(n: 2))
        } throws: { error in
            guard let error = error as? StreamBrokerClientError else { return false }
            return error.code == .broker(.forbidden) && error.message.contains("payments")
        }
        await client.close()
    }

    @Test func anUntrustedCertificateIsReportedWhileConnectWaits() async throws {
        let files = try Files.make()
        defer { files.remove() }
        let broker = try await BrokerProcess.started(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": files.key])
        defer { broker.stop() }
        // The system's roots do not know the test's CA.
        let client = Self.client("wss://localhost:\(broker.port)/ws")
        #expect(try await !Self.connects(client, within: 2))
        let reason = try #require(client.lastConnectionError)
        #expect("\(reason)".lowercased().contains("certificate"), "\(reason)")
        await client.close()
        // A plain ws:// client to the TLS port does not connect either: the broker answers the
        // upgrade with a TLS alert and closes, which the client reports (and it keeps trying).
        let plain = Self.client("ws://localhost:\(broker.port)/ws", connectTimeout: .milliseconds(500))
        #expect(try await !Self.connects(plain, within: 3))
        let refused = try #require(plain.lastConnectionError)
        #expect("\(refused)".contains("wss://"), "\(refused)")
        let closing = ContinuousClock.now
        await plain.close(closeGrace: .milliseconds(500))
        #expect(ContinuousClock.now - closing < .seconds(30))
        #expect(broker.isRunning)
    }

    @Test func wssToAnIPAddressChecksTheAddressInTheCertificate() async throws {
        // A certificate that names 127.0.0.1: no server name is sent (SNI carries no address)
        // and the address is checked instead.
        let files = try Files.make()
        defer { files.remove() }
        let broker = try await BrokerProcess.started(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": files.key])
        defer { broker.stop() }
        let client = Self.client("wss://127.0.0.1:\(broker.port)/ws", tls: try .trusting(caFile: files.ca))
        #expect(try await Self.connects(client, within: 10))
        let published = try await client.publish(topic: "orders.ip", payload: Order(n: 1))
        #expect(published.offset == 1)
        await client.close()
        // A certificate that names only localhost does not pass for 127.0.0.1.
        let other = try Files.make(subjectAltName: "DNS:localhost")
        defer { other.remove() }
        let named = try await BrokerProcess.started(["BUS_TLS_CERT_FILE": other.cert, "BUS_TLS_KEY_FILE": other.key])
        defer { named.stop() }
        let refused = Self.client("wss://127.0.0.1:\(named.port)/ws", tls: try .trusting(caFile: other.ca))
        #expect(try await !Self.connects(refused, within: 2))
        let reason = try #require(refused.lastConnectionError)
        #expect("\(reason)".contains("does not name 127.0.0.1"), "\(reason)")
        await refused.close()
        // By its name, the same broker is trusted.
        let byName = Self.client("wss://localhost:\(named.port)/ws", tls: try .trusting(caFile: other.ca))
        #expect(try await Self.connects(byName, within: 10))
        await byName.close()
    }

    @Test func oneTLSContextServesEveryAttempt() throws {
        let cache = TLSContextCache(nil)
        #expect(try cache.context() === cache.context())
        // A configuration that cannot be made into a context fails each attempt (nothing kept).
        var broken = TLSConfiguration.makeClientConfiguration()
        broken.trustRoots = .file("/nonexistent/streambroker-ca.pem")
        let failing = TLSContextCache(broken)
        #expect(throws: (any Error).self) { try failing.context() }
        #expect(throws: (any Error).self) { try failing.context() }
    }

    @Test func withoutATokenRequestsAreUnauthorized() async throws {
        let files = try Files.make()
        defer { files.remove() }
        let broker = try await BrokerProcess.started(["BUS_AUTH": "token", "BUS_TOKENS_FILE": files.tokens])
        defer { broker.stop() }
        let anonymous = Self.client(broker.url)
        try await anonymous.connect()
        await #expect {
            try await anonymous.publish(topic: "orders.x", payload: Order(n: 1))
        } throws: { error in
            (error as? StreamBrokerClientError)?.code == .broker(.unauthorized)
        }
        await anonymous.close()
        // A wrong token: the broker refuses the upgrade (401), so the client never connects.
        let wrong = Self.client(broker.url, token: "not-the-token")
        #expect(try await !Self.connects(wrong, within: 2))
        #expect(wrong.lastConnectionError != nil)
        await wrong.close()
        // The right one.
        let good = Self.client(broker.url, token: Self.token)
        try await good.connect()
        #expect(try await good.publish(topic: "orders.x", payload: Order(n: 1)).offset == 1)
        await good.close()
    }

    @Test func aCAFileThatCannotBeUsedIsAConfigurationError() throws {
        let files = try Files.make()
        defer { files.remove() }
        let garbage = files.path("garbage.pem")
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: garbage))
        for path in [files.path("missing.pem"), garbage, files.key] {
            #expect {
                _ = try TLSConfiguration.trusting(caFile: path)
            } throws: { error in
                (error as? StreamBrokerClientError)?.code == .configuration
            }
        }
        #expect(throws: Never.self) { _ = try TLSConfiguration.trusting(caFile: files.ca) }
    }
}
