import Foundation
import Testing

@testable import WSGate

/// `BUS_TLS_CERT_FILE` and `BUS_TLS_KEY_FILE` (SPEC §12): both or neither, read and checked at
/// start; every way they can be wrong is refused with a message naming the variable. The
/// certificates are made for each test with the `openssl` command.
@Suite("GatewayConfig: TLS")
struct GatewayTLSTests {
    /// A directory with a self-signed certificate and its key, and a second key that does not match.
    struct Files {
        let directory: URL
        var cert: String { directory.appendingPathComponent("cert.pem").path }
        var key: String { directory.appendingPathComponent("key.pem").path }
        var otherKey: String { directory.appendingPathComponent("other.pem").path }

        func write(_ name: String, _ text: String) -> String {
            let url = directory.appendingPathComponent(name)
            #expect(FileManager.default.createFile(atPath: url.path, contents: Data(text.utf8)))
            return url.path
        }
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " ")) failed")
    }

    func withFiles(_ body: (Files) throws -> Void) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let files = Files(directory: directory)
        try Self.openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", files.key, "-out", files.cert,
        ])
        try Self.openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", files.otherKey])
        try body(files)
    }

    /// The configuration error for `env`, or nil when it is accepted.
    func refusal(_ env: [String: String]) -> String? {
        do {
            _ = try GatewayConfig.fromEnvironment(env)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func neitherMeansPlainText() throws {
        let config = try GatewayConfig.fromEnvironment([:])
        #expect(config.tls == nil)
        let blank = try GatewayConfig.fromEnvironment(["BUS_TLS_CERT_FILE": " ", "BUS_TLS_KEY_FILE": ""])
        #expect(blank.tls == nil)
    }

    @Test func bothLoadAContext() throws {
        try withFiles { files in
            let config = try GatewayConfig.fromEnvironment(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": files.key])
            #expect(config.tls?.certificateFile == files.cert)
            #expect(config.tls?.keyFile == files.key)
        }
    }

    @Test func oneWithoutTheOtherIsRefused() throws {
        try withFiles { files in
            let noKey = try #require(refusal(["BUS_TLS_CERT_FILE": files.cert]))
            #expect(noKey.contains("BUS_TLS_KEY_FILE") && noKey.contains("both or neither"))
            let noCert = try #require(refusal(["BUS_TLS_KEY_FILE": files.key]))
            #expect(noCert.contains("BUS_TLS_CERT_FILE") && noCert.contains("both or neither"))
        }
    }

    @Test func unreadableFilesAreRefused() throws {
        try withFiles { files in
            let missing = files.directory.appendingPathComponent("missing.pem").path
            let cert = try #require(refusal(["BUS_TLS_CERT_FILE": missing, "BUS_TLS_KEY_FILE": files.key]))
            #expect(cert.hasPrefix("BUS_TLS_CERT_FILE=\(missing) cannot be read"))
            let key = try #require(refusal(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": missing]))
            #expect(key.hasPrefix("BUS_TLS_KEY_FILE=\(missing) cannot be read"))
            // A directory is not a file either.
            let directory = try #require(refusal(["BUS_TLS_CERT_FILE": files.directory.path, "BUS_TLS_KEY_FILE": files.key]))
            #expect(directory.hasPrefix("BUS_TLS_CERT_FILE="))
        }
    }

    @Test func badPEMIsRefused() throws {
        try withFiles { files in
            let garbage = files.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            let empty = files.write("empty.pem", "")
            for bad in [garbage, empty, files.key] {
                let message = try #require(refusal(["BUS_TLS_CERT_FILE": bad, "BUS_TLS_KEY_FILE": files.key]))
                #expect(message.hasPrefix("BUS_TLS_CERT_FILE=\(bad)") && message.contains("certificate"), "\(message)")
            }
            for bad in [garbage, empty, files.cert] {
                let message = try #require(refusal(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": bad]))
                #expect(message.hasPrefix("BUS_TLS_KEY_FILE=\(bad)") && message.contains("private key"), "\(message)")
            }
        }
    }

    @Test func aKeyThatDoesNotMatchIsRefused() throws {
        try withFiles { files in
            let message = try #require(refusal(["BUS_TLS_CERT_FILE": files.cert, "BUS_TLS_KEY_FILE": files.otherKey]))
            #expect(message.hasPrefix("BUS_TLS_KEY_FILE=\(files.otherKey) does not go with the certificate"), "\(message)")
        }
    }
}
