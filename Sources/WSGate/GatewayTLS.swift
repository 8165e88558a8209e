import Foundation
import NIOCore
import NIOSSL

/// The broker's TLS identity (SPEC §12): `BUS_TLS_CERT_FILE` and `BUS_TLS_KEY_FILE`, read and
/// checked once at start, so that a missing file, a bad PEM or a key that does not match the
/// certificate stops the process before it listens.
struct GatewayTLS: Sendable {
    let certificateFile: String
    let keyFile: String
    /// Made once and shared by every connection.
    let context: NIOSSLContext

    /// Reads the variables from `value` (nil: unset or empty); nil when neither is set.
    static func fromEnvironment(_ value: (String) -> String?) throws(GatewayConfig.Invalid) -> GatewayTLS? {
        switch (value("BUS_TLS_CERT_FILE"), value("BUS_TLS_KEY_FILE")) {
        case (nil, nil):
            return nil
        case (let certificate?, let key?):
            return try load(certificateFile: certificate, keyFile: key)
        case (nil, _):
            throw GatewayConfig.Invalid(description: "BUS_TLS_KEY_FILE is set without BUS_TLS_CERT_FILE; set both or neither")
        case (_, nil):
            throw GatewayConfig.Invalid(description: "BUS_TLS_CERT_FILE is set without BUS_TLS_KEY_FILE; set both or neither")
        }
    }

    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    static func load(certificateFile: String, keyFile: String) throws(GatewayConfig.Invalid) -> GatewayTLS {
        let chainBytes = try read(certificateFile, variable: "BUS_TLS_CERT_FILE")
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(chainBytes)
        } catch {
            throw GatewayConfig.Invalid(description: "BUS_TLS_CERT_FILE=\(certificateFile) is not a PEM certificate: \(error)")
        }
        guard !chain.isEmpty else {
            throw GatewayConfig.Invalid(description: "BUS_TLS_CERT_FILE=\(certificateFile) holds no PEM certificate")
        }
        let keyBytes = try read(keyFile, variable: "BUS_TLS_KEY_FILE")
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: keyBytes, format: .pem)
        } catch {
            throw GatewayConfig.Invalid(description: "BUS_TLS_KEY_FILE=\(keyFile) is not an unencrypted PEM private key: \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw GatewayConfig.Invalid(
                description: "BUS_TLS_KEY_FILE=\(keyFile) does not go with the certificate in BUS_TLS_CERT_FILE=\(certificateFile): \(error)")
        }
        return GatewayTLS(certificateFile: certificateFile, keyFile: keyFile, context: context)
    }

    private static func read(_ path: String, variable: String) throws(GatewayConfig.Invalid) -> [UInt8] {
        do {
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            let reason = (error as NSError).localizedDescription
            throw GatewayConfig.Invalid(description: "\(variable)=\(path) cannot be read: \(reason)")
        }
    }
}
