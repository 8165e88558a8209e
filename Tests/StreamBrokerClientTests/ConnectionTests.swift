import Crypto
import Foundation
import Synchronization
import Testing

@testable import StreamBrokerClient

#if canImport(Glibc)
import Glibc
#endif

/// How the client's WebSocket transport fails when there is no broker to talk to.
@Suite("Client connection failures", .serialized)
struct ConnectionTests {
    /// A listening socket that never accepts: the kernel completes TCP handshakes into its
    /// backlog, so a client connects and then waits for an upgrade answer that never comes.
    final class SilentListener: Sendable {
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

        /// Takes the next connection from the backlog (waits up to `seconds`).
        func accept(within seconds: Int = 5) -> Int32? {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(seconds * 1000)) == 1 else { return nil }
            let peer = Glibc.accept(fd, nil, nil)
            guard peer >= 0 else { return nil }
            var timeout = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            return peer
        }
    }

    /// Runs blocking socket calls on a thread of their own, not on the pool the client's tasks need.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: body()) }.start()
        }
    }

    /// Reads what the peer sends until it closes: nil when it did not close within the socket's
    /// receive timeout.
    static func readUntilClosed(_ fd: Int32) -> [UInt8]? {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count == 0 { return received }
            if count < 0 { return nil }
            received += buffer[0..<count]
        }
    }

    /// Reads the upgrade request (up to its blank line) and returns its `Sec-WebSocket-Key`.
    static func readUpgradeKey(_ fd: Int32) -> String? {
        var received: [UInt8] = []
        var byte: UInt8 = 0
        while !received.reversed().starts(with: Array("\n\r\n\r".utf8)) {
            guard recv(fd, &byte, 1, 0) == 1 else { return nil }
            received.append(byte)
        }
        let line = String(decoding: received, as: UTF8.self).split(separator: "\r\n")
            .first { $0.lowercased().hasPrefix("sec-websocket-key:") }
        return line.map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) }
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
    }

    static func client(_ port: Int, connectTimeout: Duration = .seconds(10)) -> StreamBrokerClient {
        StreamBrokerClient(
            configuration: .init(
                url: "ws://127.0.0.1:\(port)/ws", initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(100),
                connectTimeout: connectTimeout))
    }

    /// A listener, a client of it, and the client's `connect()` under way.
    static func connectingClient() throws -> (SilentListener, StreamBrokerClient, Task<Void, any Error>) {
        let listener = try SilentListener()
        let client = Self.client(listener.port)
        return (listener, client, Task { try await client.connect() })
    }

    /// Reads the upgrade request and answers 101 with `accept(key)` as `Sec-WebSocket-Accept`;
    /// returns the key (nil when no request came).
    static func answerUpgrade(_ peer: Int32, accept: @escaping @Sendable (String) -> String) async -> String? {
        guard let key = await offPool({ readUpgradeKey(peer) }) else { return nil }
        send(
            peer,
            Array(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(accept(key))\r\n\r\n".utf8))
        return key
    }

    @Test func anUnansweredUpgradeIsGivenUpAfterConnectTimeoutAndItsSocketClosed() async throws {
        let listener = try SilentListener()
        let client = Self.client(listener.port, connectTimeout: .milliseconds(300))
        let connecting = Task { try await client.connect() }
        try await waitUntil("an attempt timed out") {
            (client.lastConnectionError as? StreamBrokerClientError)?.code == .timeout
        }
        // The abandoned attempt's socket is closed, not left waiting for the answer.
        let first = try #require(await Self.offPool { listener.accept() })
        defer { close(first) }
        let request = try #require(await Self.offPool { Self.readUntilClosed(first) }, "the timed-out attempt's socket was left open")
        #expect(String(decoding: request, as: UTF8.self).hasPrefix("GET /ws HTTP/1.1\r\n"))
        let closing = ContinuousClock.now
        await client.close(closeGrace: .milliseconds(300))
        #expect(ContinuousClock.now - closing < .seconds(5))
        await #expect(throws: StreamBrokerClientError.closedClient) { try await connecting.value }
    }

    /// A 101 without the right `Sec-WebSocket-Accept` (a proxy that answers for the broker) is
    /// reported, and the socket closed.
    @Test func aWrongUpgradeAnswerIsReportedAndItsSocketClosed() async throws {
        let (listener, client, connecting) = try Self.connectingClient()
        let peer = try #require(await Self.offPool { listener.accept() })
        defer { close(peer) }
        #expect(await Self.answerUpgrade(peer) { _ in "wrong" } != nil)
        #expect(await Self.offPool { Self.readUntilClosed(peer) } != nil, "the socket of the failed upgrade was left open")
        try await waitUntil("the failure was reported") { client.lastConnectionError != nil }
        #expect("\(client.lastConnectionError!)".contains("did not upgrade to a WebSocket"), "\(client.lastConnectionError!)")
        await client.close(closeGrace: .milliseconds(300))
        _ = try? await connecting.value
    }

    /// A broker that ends the connection with a code other than 1000 says why.
    @Test func theBrokersCloseCodeIsReported() async throws {
        let (listener, client, connecting) = try Self.connectingClient()
        let peer = try #require(await Self.offPool { listener.accept() })
        defer { close(peer) }
        // The right answer (RFC 6455 §4.2.2).
        _ = try #require(
            await Self.answerUpgrade(peer) { key in
                Data(Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))).base64EncodedString()
            })
        do {
            try await waitUntil("connected", timeout: .seconds(10)) { client.state.withLock { $0.connection != nil } }
        } catch {
            Issue.record("not connected: \(String(describing: client.lastConnectionError))")
            throw error
        }
        try await connecting.value
        let reason = Array("token revoked".utf8)
        Self.send(peer, [0x88, UInt8(2 + reason.count), 0x03, 0xF0] + reason)  // close, 1008
        let answer = try #require(await Self.offPool { Self.readUntilClosed(peer) }, "the client did not answer the close and close the socket")
        // Its answer: a masked close frame with the same code.
        #expect(answer.count >= 8 && answer[0] == 0x88 && answer[1] & 0x80 != 0)
        #expect(zip(answer[6..<8], answer[2..<4]).map { $0 ^ $1 } == [0x03, 0xF0])
        try await waitUntil("the close was reported") { client.lastConnectionError != nil }
        #expect("\(client.lastConnectionError!)".contains("1008 token revoked"), "\(client.lastConnectionError!)")
        await client.close(closeGrace: .milliseconds(300))
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

    /// A name goes out as the TLS server name; an address in any form the resolver reads as one
    /// does not (SNI carries only names; the certificate is then checked against the address).
    @Test func onlyNamesAreSentAsTheTLSServerName() throws {
        #expect(try BrokerSocket.Target("wss://localhost:7443/ws").serverName == "localhost")
        #expect(try BrokerSocket.Target("wss://broker-1.example/ws").serverName == "broker-1.example")
        for url in ["wss://127.0.0.1:7443/ws", "wss://127.1:7443/ws", "wss://[::1]:7443/ws", "wss://[fe80::1%25lo]:7443/ws"] {
            #expect(try BrokerSocket.Target(url).serverName == nil, "\(url)")
        }
        #expect(BrokerSocket.Target.isAddress("fe80::1%lo") && BrokerSocket.Target.isAddress("2130706433"))
        #expect(!BrokerSocket.Target.isAddress("localhost") && !BrokerSocket.Target.isAddress("1.example"))
    }
}
