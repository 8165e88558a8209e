import Foundation
import Synchronization

/// The MongoDB the store tests use: `MONGO_URL` when set, else the wire-protocol double
/// (`Tests/MongoDouble/mongo_double.py`) started once for this test process and stopped at exit.
enum MongoTestServer {
    private static let started = Mutex<Result<String, TestServerError>?>(nil)

    struct TestServerError: Error, CustomStringConvertible {
        let description: String
    }

    static func url() throws -> String {
        if let url = ProcessInfo.processInfo.environment["MONGO_URL"], !url.isEmpty { return url }
        return try started.withLock { state in
            if let state { return try state.get() }
            let result = Result { try startDouble() }.mapError { TestServerError(description: "\($0)") }
            state = result
            return try result.get()
        }
    }

    private static let childPID = Atomic<Int32>(0)

    private static func startDouble() throws -> String {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = repo.appendingPathComponent("Tests/MongoDouble/mongo_double.py").path
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("mongo-double-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--host", "127.0.0.1", "--port", "0"]
        process.standardError = try FileHandle(forWritingTo: log)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        childPID.store(process.processIdentifier, ordering: .relaxed)
        atexit {
            let pid = MongoTestServer.childPID.load(ordering: .relaxed)
            // SIGKILL: the child inherits a signal mask with SIGTERM blocked from this process.
            if pid > 0 { kill(pid, SIGKILL) }
        }
        // The double logs "mongo_double listening on HOST:PORT" once it accepts connections.
        let deadline = Date().addingTimeInterval(20)
        var text = ""
        while Date() < deadline && process.isRunning {
            text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let range = text.range(of: #"listening on 127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                let port = text[range].split(separator: ":").last!
                return "mongodb://127.0.0.1:\(port)/?replicaSet=rs0"
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        process.terminate()
        throw TestServerError(description: "the MongoDB double did not start (is Tests/MongoDouble/requirements.txt installed?): \(text.suffix(2000))")
    }
}
