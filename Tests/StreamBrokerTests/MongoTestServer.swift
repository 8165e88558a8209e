import Foundation
import Synchronization

/// The MongoDB the store tests use: `MONGO_URL` when set, else the wire-protocol double, started
/// once for this test process through the one wrapper every test runner uses
/// (`Tests/MongoDouble/harness.py --serve`). The wrapper stops the double when this process's
/// end of its stdin closes, so nothing outlives the tests however they end.
enum MongoTestServer {
    private static let started = Mutex<Result<String, TestServerError>?>(nil)
    /// Our end of the wrapper's stdin: open for as long as this process lives.
    private static let lifeline = Mutex<Pipe?>(nil)

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

    /// The same server with `database` in the URI's path (`mongodb://host:port/DB?options`), the
    /// form users paste: the store uses it when no database is given explicitly.
    static func url(database: String) throws -> String {
        let base = try url()
        guard let scheme = base.range(of: "://") else { return base }
        let rest = base[scheme.upperBound...]
        let hostsEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let query = rest[hostsEnd...].drop(while: { $0 != "?" })
        return "\(base[..<scheme.upperBound])\(rest[..<hostsEnd])/\(database)\(query)"
    }

    private static func startDouble() throws -> String {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let harness = repo.appendingPathComponent("Tests/MongoDouble/harness.py").path
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("mongo-double-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", harness, "--serve"]
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()
        lifeline.withLock { $0 = stdin }
        // The first line is the URL; EOF first means the wrapper failed (it gives up after 20 s).
        var output = Data()
        while !output.contains(UInt8(ascii: "\n")) {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            output.append(chunk)
        }
        let line = String(decoding: output, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        guard line.hasPrefix("mongodb://") else {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            throw TestServerError(
                description: "the MongoDB double did not start (is Tests/MongoDouble/requirements.txt installed?): \(text.suffix(2000))")
        }
        return line
    }
}
