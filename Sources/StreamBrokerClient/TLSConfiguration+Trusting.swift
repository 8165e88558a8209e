import NIOSSL

extension TLSConfiguration {
    /// A client configuration for `wss://` that trusts only the CA certificates in a PEM file
    /// (a broker whose certificate a private CA signed, or a self-signed one); the host name
    /// is still checked against the broker's certificate.
    ///
    /// ```swift
    /// let client = StreamBrokerClient(
    ///     configuration: .init(url: "wss://broker.internal:7070/ws", token: token, tls: try .trusting(caFile: "ca.pem")))
    /// ```
    /// - Throws: ``StreamBrokerClientError`` with code `.configuration` when the file cannot be
    ///   read or holds no PEM certificate.
    public static func trusting(caFile path: String) throws -> TLSConfiguration {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw StreamBrokerClientError(.configuration, "the CA file \(path) cannot be read as PEM certificates: \(error)")
        }
        guard !certificates.isEmpty else {
            throw StreamBrokerClientError(.configuration, "the CA file \(path) holds no PEM certificate")
        }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(certificates)
        return configuration
    }
}
