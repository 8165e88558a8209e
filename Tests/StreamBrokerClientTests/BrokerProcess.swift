import Foundation
import Synchronization

/// A real `stream-broker` process (the debug build) on the embedded store in a fresh data
/// directory; it can be killed with SIGKILL and started again on the same port and directory.
final class BrokerProcess: Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    let port: Int
    let dataDir: String
    let environment: [String: String]
    private let process = Mutex<Process?>(nil)

    init(environment: [String: String] = [:]) throws {
        port = Int.random(in: 20_000..<60_000)
        dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("sbclient-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        self.environment = environment
    }

    var url: String { "ws://127.0.0.1:\(port)/ws" }

    /// Starts the process and waits for `/healthz` and `/readyz`.
    func start() async throws {
        let binary = Self.repo.appendingPathComponent(".build/debug/stream-broker")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw Failure(description: "build the broker first: \(binary.path) is missing")
        }
        let process = Process()
        process.executableURL = binary
        var environment = ProcessInfo.processInfo.environment
        environment["MONGO_URL"] = nil
        environment["BUS_HOST"] = "127.0.0.1"
        environment["BUS_PORT"] = String(port)
        environment["BUS_DATA_DIR"] = dataDir
        environment["BUS_LOG_LEVEL"] = "warning"
        environment.merge(self.environment) { $1 }
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.process.withLock { $0 = process }
        let deadline = ContinuousClock.now + .seconds(60)
        // With TLS this plain-text HTTP cannot ask; the embedded store opens before the port
        // listens, so a port that accepts is a broker that is ready.
        let secure = self.environment["BUS_TLS_CERT_FILE"] != nil
        while ContinuousClock.now < deadline {
            if secure
                ? Self.accepts(port: port)
                : Self.http(port: port, "GET", "/healthz")?.status == 200 && Self.http(port: port, "GET", "/readyz")?.status == 200
            {
                return
            }
            guard process.isRunning else { throw Failure(description: "the broker exited with status \(process.terminationStatus)") }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw Failure(description: "the broker did not become ready")
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed or closed politely).
    func kill() {
        guard let process = self.process.withLock({ $0 }), process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Stops the process with SIGSTOP: it holds its connections but answers nothing.
    ///
    /// Returns once every thread of it is stopped: a thread that was running when the signal
    /// came may still read and answer a frame sent right after `kill` returned.
    func freeze() {
        guard let process = self.process.withLock({ $0 }) else { return }
        let pid = process.processIdentifier
        Foundation.kill(pid, SIGSTOP)
        let tasks = "/proc/\(pid)/task"
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
            let stopped = threads.allSatisfy { thread in
                // The state is the field after the parenthesised command name.
                guard let stat = try? String(contentsOfFile: "\(tasks)/\(thread)/stat", encoding: .utf8),
                    let end = stat.lastIndex(of: ")")
                else { return true }
                return stat[stat.index(after: end)...].trimmingPrefix(" ").first == "T"
            }
            if stopped { return }
            usleep(1_000)
        }
    }

    /// Resumes a frozen process with SIGCONT.
    func thaw() {
        guard let process = self.process.withLock({ $0 }) else { return }
        Foundation.kill(process.processIdentifier, SIGCONT)
    }

    var isRunning: Bool {
        self.process.withLock { $0?.isRunning == true }
    }

    func stop() {
        guard let process = self.process.withLock({ $0 }), process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGCONT)  // a frozen process would never see SIGTERM
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    /// Creates a topic through `POST /topics`.
    func createTopic(_ json: String) throws {
        guard let response = Self.http(port: port, "POST", "/topics", body: json), (200..<300).contains(response.status) else {
            throw Failure(description: "POST /topics \(json) failed")
        }
    }

    /// Whether a TCP connection to the port on loopback is accepted.
    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// A minimal blocking HTTP/1.1 request on loopback (FoundationNetworking is not linked).
    static func http(port: Int, _ method: String, _ path: String, body: String = "") -> (status: Int, body: String)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        let bodyBytes = Array(body.utf8)
        var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if method != "GET" { request += "Content-Type: application/json\r\nContent-Length: \(bodyBytes.count)\r\n" }
        let bytes = Array((request + "\r\n").utf8) + bodyBytes
        guard send(fd, bytes, bytes.count, 0) == bytes.count else { return nil }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            response += buffer[0..<count]
        }
        guard response.count > 12, let status = Int(String(decoding: response[9..<12], as: UTF8.self)) else { return nil }
        let text = String(decoding: response, as: UTF8.self)
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return (status, body)
    }
}

/// Waits until `condition` holds, checking every 50 ms, or fails after `timeout`.
func waitUntil(
    _ what: String, timeout: Duration = .seconds(60), _ condition: @Sendable () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw BrokerProcess.Failure(description: "timed out waiting for: \(what)")
}
