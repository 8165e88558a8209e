import Foundation
import JWTKit
import Models
import Synchronization
import Testing

@testable import BrokerAuth
@testable import WSGate

@Suite("Authenticator: tokens file and JWTs")
struct AuthenticatorTests {
    /// A JWT payload as a test wants it, claims optional.
    struct Claims: JWTPayload {
        var sub: String?
        var exp: Int64?
        var bus: [String: [String]]?

        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    static let secret = "0123456789abcdef0123456789abcdef"

    func tempFile(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID().uuidString).json").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func tokensJSON(_ entries: [(name: String, token: String, publish: [String])]) -> String {
        let items = entries.map { e in
            #"{"name":"\#(e.name)","sha256":"\#(TokenTable.hash(e.token))","publish":[\#(e.publish.map { "\"\($0)\"" }.joined(separator: ","))]}"#
        }
        return #"{"tokens":[\#(items.joined(separator: ","))]}"#
    }

    func tokenAuthenticator(_ text: String) async throws -> Authenticator {
        var settings = AuthSettings()
        settings.mode = .token
        settings.tokensFile = try tempFile(text)
        return try #require(try await Authenticator.make(settings))
    }

    @Test func hashIsLowercaseHexSHA256() {
        #expect(TokenTable.hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func tokensAreLookedUpByHash() async throws {
        let authenticator = try await tokenAuthenticator(tokensJSON([("billing", "s3cret", ["orders.>"])]))
        let principal = try await authenticator.authenticate("s3cret").get()
        #expect(principal.name == "billing")
        #expect(principal.permissions.mayPublish("orders.a"))
        #expect(principal.credential == TokenTable.hash("s3cret"))
        #expect(principal.expiresMs == nil)
        guard case .failure(let error) = await authenticator.authenticate("S3cret") else {
            Issue.record("a wrong token was accepted")
            return
        }
        #expect(error.code == .unauthorized)
    }

    @Test(arguments: [
        "not json", #"{"tokens":{}}"#, #"{"tokens":[{"sha256":"00"}]}"#, #"{"tokens":[{"name":"a","sha256":"xyz"}]}"#,
        #"{"tokens":[{"name":"a","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","publish":["a.>.b"]}]}"#,
        #"{"tokens":[{"name":"a","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","admin":"yes"}]}"#,
        #"{"tokens":[],"extra":1}"#,
    ])
    func brokenTokensFilesStopTheStart(_ text: String) async throws {
        var settings = AuthSettings()
        settings.mode = .token
        settings.tokensFile = try tempFile(text)
        await #expect(throws: AuthConfigError.self) { try await Authenticator.make(settings) }
    }

    @Test func missingFilesAndKeysNameTheVariable() async {
        var settings = AuthSettings()
        settings.mode = .token
        await #expect { try await Authenticator.make(settings) } throws: { "\($0)".contains("BUS_TOKENS_FILE") }
        settings.tokensFile = "/nonexistent/tokens.json"
        await #expect { try await Authenticator.make(settings) } throws: { "\($0)".contains("BUS_TOKENS_FILE=/nonexistent") }
        settings.mode = .jwt
        await #expect { try await Authenticator.make(settings) } throws: { "\($0)".contains("BUS_JWT_SECRET") }
        settings.jwtSecret = "short"
        await #expect { try await Authenticator.make(settings) } throws: { "\($0)".contains("at least 32 bytes") }
        settings.jwtSecret = nil
        settings.jwtPublicKeyFile = "/nonexistent/key.pem"
        await #expect { try await Authenticator.make(settings) } throws: { "\($0)".contains("BUS_JWT_PUBLIC_KEY_FILE") }
    }

    @Test func reloadReportsRemovedAndChangedEntriesAndABrokenFileKeepsTheOld() async throws {
        var settings = AuthSettings()
        settings.mode = .token
        let path = try tempFile(tokensJSON([("a", "ta", ["x"]), ("b", "tb", ["x"]), ("c", "tc", ["x"])]))
        settings.tokensFile = path
        let authenticator = try #require(try await Authenticator.make(settings))
        try Data(tokensJSON([("a", "ta", ["x"]), ("c", "tc", ["y"]), ("d", "td", ["x"])]).utf8).write(to: URL(fileURLWithPath: path))
        let changes = try authenticator.reloadTokens()
        #expect(changes.removed == [TokenTable.hash("tb")])
        #expect(changes.changed.keys.sorted() == [TokenTable.hash("tc")])
        #expect((try? await authenticator.authenticate("td").get())?.name == "d")
        #expect((try? await authenticator.authenticate("tb").get()) == nil)
        try Data("{ broken".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: AuthConfigError.self) { try authenticator.reloadTokens() }
        #expect((try? await authenticator.authenticate("td").get())?.name == "d")
    }

    func jwtAuthenticator(now: Int64, skewMs: Int64 = 5_000, publicKeyFile: String? = nil) async throws -> Authenticator {
        var settings = AuthSettings()
        settings.mode = .jwt
        if let publicKeyFile { settings.jwtPublicKeyFile = publicKeyFile } else { settings.jwtSecret = Self.secret }
        settings.skewMs = skewMs
        return try #require(try await Authenticator.make(settings, nowMs: { now }))
    }

    func hs256(_ claims: Claims, secret: String = secret) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }

    @Test func jwtClaimsBecomeThePrincipal() async throws {
        let authenticator = try await jwtAuthenticator(now: 1_000_000)
        let token = try await hs256(Claims(sub: "svc", exp: 2_000, bus: ["publish": ["a.*"], "groups": ["g"]]))
        let principal = try await authenticator.authenticate(token).get()
        #expect(principal.name == "svc")
        #expect(principal.expiresMs == 2_000_000)
        #expect(authenticator.closesAt(principal) == 2_005_000)
        #expect(principal.permissions.mayPublish("a.b"))
        #expect(!principal.permissions.maySubscribe("a.b"))
        #expect(principal.permissions.mayJoin("g"))
        #expect(!principal.permissions.mayJoin("h"))
    }

    func refusal(_ authenticator: Authenticator, _ token: String) async -> String? {
        guard case .failure(let error) = await authenticator.authenticate(token) else { return nil }
        #expect(error.code == .unauthorized)
        return error.message
    }

    @Test func badJWTsAreRefusedWithAReason() async throws {
        let authenticator = try await jwtAuthenticator(now: 1_000_000, skewMs: 5_000)
        let forged = try await hs256(Claims(sub: "svc", exp: 2_000), secret: "another-secret-another-secret-xx")
        #expect(await refusal(authenticator, forged)?.contains("signature") == true)
        #expect(await refusal(authenticator, try await hs256(Claims(sub: "svc", exp: nil)))?.contains("exp") == true)
        #expect(await refusal(authenticator, try await hs256(Claims(sub: nil, exp: 2_000)))?.contains("sub") == true)
        #expect(await refusal(authenticator, "not.a.jwt") != nil)
        // Expired: refused past exp + skew, honoured within the skew.
        #expect(await refusal(authenticator, try await hs256(Claims(sub: "svc", exp: 994)))?.contains("expired") == true)
        #expect(await refusal(authenticator, try await hs256(Claims(sub: "svc", exp: 996))) == nil)
        #expect(
            await refusal(authenticator, try await hs256(Claims(sub: "svc", exp: 2_000, bus: ["publish": ["a.>.b"]])))?.contains("publish") == true)
    }

    @Test func es256TokensVerifyWithThePublicKeyFile() async throws {
        let key = ES256PrivateKey()
        let authenticator = try await jwtAuthenticator(now: 1_000_000, publicKeyFile: try tempFile(key.publicKey.pemRepresentation))
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: key)
        let token = try await keys.sign(Claims(sub: "edge", exp: 2_000, bus: ["subscribe": [">"]]))
        #expect(try await authenticator.authenticate(token).get().name == "edge")
        let other = JWTKeyCollection()
        await other.add(ecdsa: ES256PrivateKey())
        #expect(await refusal(authenticator, try await other.sign(Claims(sub: "edge", exp: 2_000))) != nil)
        // An HS256 token made with the public key's text as secret is not accepted.
        let confused = try await hs256(Claims(sub: "edge", exp: 2_000), secret: key.publicKey.pemRepresentation)
        #expect(await refusal(authenticator, confused) != nil)
    }

    @Test func bearerHeadersAreParsed() {
        #expect(AuthGate.bearer("Bearer abc") == "abc")
        #expect(AuthGate.bearer("bearer  abc ") == "abc")
        #expect(AuthGate.bearer("Basic abc") == nil)
        #expect(AuthGate.bearer("Bearer") == nil)
        #expect(AuthGate.bearer(nil) == nil)
    }

    @Test func gatewayConfigReadsTheAuthVariables() throws {
        let config = try GatewayConfig.fromEnvironment([
            "BUS_AUTH": "jwt", "BUS_JWT_SECRET": Self.secret, "BUS_JWT_SKEW_MS": "2000", "BUS_AUTH_TIMEOUT_MS": "800",
        ])
        #expect(config.auth.mode == .jwt)
        #expect(config.auth.jwtSecret == Self.secret)
        #expect(config.auth.skewMs == 2_000)
        #expect(config.auth.timeoutMs == 800)
        #expect { try GatewayConfig.fromEnvironment(["BUS_AUTH": "ldap"]) } throws: { "\($0)".contains("BUS_AUTH=ldap") }
        #expect { try GatewayConfig.fromEnvironment(["BUS_AUTH_TIMEOUT_MS": "-1"]) } throws: { "\($0)".contains("BUS_AUTH_TIMEOUT_MS") }
    }
}
