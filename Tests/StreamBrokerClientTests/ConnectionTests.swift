import Foundation
import Testing

@testable import StreamBrokerClient

#if canImport(Glibc)
import Glibc
#endif

/// How the client's WebSocket transport fails when there is no broker to talk to.
@Suite("Client connection failures")
struct ConnectionTests {
    /// A listening socket that never accepts: the kernel completes TCP handshakes into its
    /// backlog, so a client connects and then waits for an upgrade answer that never comes.
    final class SilentListener {
        let fd: Int32
        let port: Int

        init() throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
            }
            guard bound == 0, listen(fd, 16) == 0 else {
                close(fd)
                throw BrokerProcess.Failure(description: "cannot listen: errno \(errno)")
            }
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            self.fd = fd
            port = Int(UInt16(bigEndian: address.sin_port))
        }

        deinit { close(fd) }
    }

    @Test func anUnansweredUpgradeIsGivenUpAfterConnectTimeout() async throws {
        let listener = try SilentListener()
        let client = StreamBrokerClient(
            configuration: .init(
                url: "ws://127.0.0.1:\(listener.port)/ws", initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(100),
                connectTimeout: .milliseconds(300)))
        let connecting = Task { try await client.connect() }
        try await waitUntil("an attempt timed out") {
            (client.lastConnectionError as? StreamBrokerClientError)?.code == .timeout
        }
        let closing = ContinuousClock.now
        await client.close(closeGrace: .milliseconds(300))
        #expect(ContinuousClock.now - closing < .seconds(5))
        await #expect(throws: StreamBrokerClientError.closedClient) { try await connecting.value }
    }

    @Test func aURLThatIsNotAWebSocketURLIsReported() async throws {
        for url in ["http://127.0.0.1:1/ws", "not a url", "ws:///ws"] {
            let client = StreamBrokerClient(configuration: .init(url: url, initialBackoff: .milliseconds(50)))
            let connecting = Task { try await client.connect() }
            try await waitUntil("the URL was refused") { client.lastConnectionError != nil }
            #expect("\(client.lastConnectionError!)".contains("is not a ws:// or wss:// URL"), "\(url)")
            await client.close(closeGrace: .milliseconds(100))
            _ = try? await connecting.value
        }
    }

    @Test func targetsOfURLs() throws {
        let plain = try BrokerSocket.Target("ws://localhost:7070/ws?x=1")
        #expect(!plain.secure && plain.host == "localhost" && plain.port == 7070)
        #expect(plain.pathAndQuery == "/ws?x=1" && plain.hostHeader == "localhost:7070")
        let secure = try BrokerSocket.Target("wss://broker.example")
        #expect(secure.secure && secure.port == 443 && secure.pathAndQuery == "/" && secure.hostHeader == "broker.example")
        let v6 = try BrokerSocket.Target("ws://[::1]:7070/ws")
        #expect(v6.host == "::1" && v6.hostHeader == "[::1]:7070")
    }
}
