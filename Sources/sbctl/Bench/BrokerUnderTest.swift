import Foundation
import Models
import Synchronization

/// A broker binary started by `sbctl bench` on a free port with a fresh data directory (and a
/// fresh `MONGO_DB` when `MONGO_URL` is set), so its CPU time and memory can be read from `/proc`.
final class BrokerUnderTest: Sendable {
    let binary: String
    let port: Int
    let dataDir: String
    let pid: Int32
    private let process: Mutex<Process>

    private init(binary: String, port: Int, dataDir: String, process: Process) {
        self.binary = binary
        self.port = port
        self.dataDir = dataDir
        self.pid = process.processIdentifier
        self.process = Mutex(process)
    }

    var webSocketURL: String { "ws://127.0.0.1:\(port)/ws" }
    var httpBase: String { "http://127.0.0.1:\(port)" }
    var isRunning: Bool { process.withLock { $0.isRunning } }
    var exitStatus: Int32 { process.withLock { $0.terminationStatus } }

    /// Starts `binary` and waits until `/readyz` answers 200 (a few ports are tried if one is taken).
    static func start(binary: String, timeout: Double) async throws -> BrokerUnderTest {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CommandFailure(code: "bad_usage", message: "--broker \(binary) is not an executable file")
        }
        var lastProblem = ""
        for _ in 0..<5 {
            let port = Int.random(in: 20_000..<60_000)
            let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("sbctl-bench-\(UUID().uuidString.prefix(8))").path
            try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            var environment = ProcessInfo.processInfo.environment
            environment["BUS_HOST"] = "127.0.0.1"
            environment["BUS_PORT"] = String(port)
            environment["BUS_DATA_DIR"] = dataDir
            environment["BUS_LOG_LEVEL"] = environment["BUS_LOG_LEVEL"] ?? "warning"
            if environment["MONGO_URL"] != nil { environment["MONGO_DB"] = "bench_\(UUID().uuidString.prefix(8).lowercased())" }
            process.environment = environment
            let log =
                FileManager.default.createFile(atPath: dataDir + "/broker.log", contents: nil)
                ? FileHandle(forWritingAtPath: dataDir + "/broker.log") : nil
            process.standardOutput = log ?? FileHandle.nullDevice
            process.standardError = log ?? FileHandle.nullDevice
            try process.run()
            let broker = BrokerUnderTest(binary: binary, port: port, dataDir: dataDir, process: process)
            let admin = AdminAPI(base: broker.httpBase, token: nil, timeout: 2)
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline, broker.isRunning {
                if (try? await admin.get("/readyz"))?["ready"] == .bool(true) { return broker }
                try await Task.sleep(for: .milliseconds(100))
            }
            lastProblem = broker.isRunning ? "not ready within \(timeout.formatted()) s" : "exited with status \(broker.exitStatus)"
            broker.stop()
        }
        throw CommandFailure(code: "unavailable", message: "\(binary) did not start: \(lastProblem)")
    }

    /// User plus system CPU seconds used so far (`/proc/PID/stat`).
    func cpuSeconds() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The broker's CPU time and context switches so far.
    func usage() -> BrokerUsage { BrokerUsage(cpuSeconds: cpuSeconds(), contextSwitches: contextSwitches()) }

    /// Context switches so far, voluntary and not, summed over the broker's live threads
    /// (`/proc/PID/task/*/status`; the broker's threads — event loops, store writer, Swift's
    /// pool — live as long as it does, so none is lost between two readings).
    func contextSwitches() -> Int {
        let tasks = "/proc/\(pid)/task"
        guard let threads = try? FileManager.default.contentsOfDirectory(atPath: tasks) else { return 0 }
        var total = 0
        for thread in threads {
            guard let status = try? String(contentsOfFile: "\(tasks)/\(thread)/status", encoding: .utf8) else { continue }
            for line in status.split(separator: "\n")
            where line.hasPrefix("voluntary_ctxt_switches:") || line.hasPrefix("nonvoluntary_ctxt_switches:") {
                total += line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int($0) } ?? 0
            }
        }
        return total
    }

    /// Resident memory in bytes (`VmRSS` of `/proc/PID/status`).
    func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { return 0 }
        return kilobytes * 1024
    }

    /// SIGTERM, then SIGKILL after 10 s; the data directory is removed.
    func stop() {
        if isRunning {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while isRunning && Date() < deadline { usleep(20_000) }
            if isRunning { kill(pid, SIGKILL) }
            process.withLock { $0.waitUntilExit() }
        }
        try? FileManager.default.removeItem(atPath: dataDir)
    }
}

/// What a broker has used so far: two readings bracket a workload's measured phase.
struct BrokerUsage: Sendable {
    var cpuSeconds: Double
    var contextSwitches: Int
}
