import Crypto
import Foundation
import JWTKit
import Models
import Synchronization

/// How clients prove who they are (SPEC §12), as read from `BUS_AUTH*` and `BUS_JWT_*`.
public struct AuthSettings: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable, CaseIterable {
        /// Every client may do everything.
        case none
        /// Bearer tokens listed (hashed) in `BUS_TOKENS_FILE`.
        case token
        /// JWTs signed with `BUS_JWT_SECRET` (HS256) or the key in `BUS_JWT_PUBLIC_KEY_FILE`.
        case jwt
    }

    public var mode: Mode = .none
    public var tokensFile: String?
    public var jwtSecret: String?
    public var jwtPublicKeyFile: String?
    /// How long past its `exp` a JWT is still honoured (clocks differ).
    public var skewMs: Int64 = 5_000
    /// How long a WebSocket may stay unauthenticated.
    public var timeoutMs: Int64 = 5_000

    public init() {}
}

/// A configuration the authenticator cannot work with: the message names the variable.
public struct AuthConfigError: Error, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// Checks credentials: looks a token's hash up in the tokens file, or verifies a JWT.
public final class Authenticator: Sendable {
    public let settings: AuthSettings
    private let tokens: Mutex<TokenTable>
    private let keys: JWTKeyCollection?
    /// Wall-clock time in epoch milliseconds (injected by tests).
    private let nowMs: @Sendable () -> Int64

    private init(settings: AuthSettings, tokens: TokenTable, keys: JWTKeyCollection?, nowMs: @escaping @Sendable () -> Int64) {
        self.settings = settings
        self.tokens = Mutex(tokens)
        self.keys = keys
        self.nowMs = nowMs
    }

    /// The authenticator for `settings`, or nil when `mode` is `none`.
    /// - Throws: ``AuthConfigError`` naming the variable (missing or broken file, bad key).
    public static func make(
        _ settings: AuthSettings, nowMs: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }
    ) async throws(AuthConfigError) -> Authenticator? {
        switch settings.mode {
        case .none:
            return nil
        case .token:
            guard let path = settings.tokensFile else { throw AuthConfigError("BUS_AUTH=token needs BUS_TOKENS_FILE") }
            return Authenticator(settings: settings, tokens: try TokenTable.load(path), keys: nil, nowMs: nowMs)
        case .jwt:
            let keys = JWTKeyCollection()
            switch (settings.jwtSecret, settings.jwtPublicKeyFile) {
            case (let secret?, nil):
                // HS256 wants a key at least as long as its hash (RFC 7518 §3.2).
                guard secret.utf8.count >= 32 else {
                    throw AuthConfigError("BUS_JWT_SECRET must be at least 32 bytes long (HS256), it has \(secret.utf8.count)")
                }
                await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            case (nil, let path?):
                let pem: String
                do {
                    pem = try String(contentsOfFile: path, encoding: .utf8)
                } catch {
                    throw AuthConfigError("BUS_JWT_PUBLIC_KEY_FILE=\(path) cannot be read: \(error.localizedDescription)")
                }
                if let rsa = try? Insecure.RSA.PublicKey(pem: pem) {
                    await keys.add(rsa: rsa, digestAlgorithm: .sha256)
                } else if let ec = try? ES256PublicKey(pem: pem) {
                    await keys.add(ecdsa: ec)
                } else {
                    throw AuthConfigError("BUS_JWT_PUBLIC_KEY_FILE=\(path) holds no RSA or P-256 public key in PEM form")
                }
            case (nil, nil):
                throw AuthConfigError("BUS_AUTH=jwt needs BUS_JWT_SECRET (HS256) or BUS_JWT_PUBLIC_KEY_FILE (RS256, ES256)")
            case (_?, _?):
                throw AuthConfigError("set one of BUS_JWT_SECRET and BUS_JWT_PUBLIC_KEY_FILE, not both")
            }
            return Authenticator(settings: settings, tokens: TokenTable(entries: [:]), keys: keys, nowMs: nowMs)
        }
    }

    /// Who `token` names, or `unauthorized` saying why not.
    public func authenticate(_ token: String) async -> Result<Principal, RequestError> {
        switch settings.mode {
        case .none:
            return .success(Principal(name: "anonymous", permissions: Permissions()))
        case .token:
            let hash = TokenTable.hash(token)
            guard let principal = tokens.withLock({ $0.entries[hash] }) else {
                return .failure(RequestError(.unauthorized, "unknown token"))
            }
            return .success(principal)
        case .jwt:
            guard let keys else { return .failure(RequestError(.unauthorized, "no JWT key")) }
            let claims: BusClaims
            do {
                claims = try await keys.verify(token, as: BusClaims.self)
            } catch {
                return .failure(RequestError(.unauthorized, Self.describe(error)))
            }
            let expiresMs = Int64(claims.exp.value.timeIntervalSince1970 * 1000)
            guard nowMs() < expiresMs + settings.skewMs else {
                return .failure(RequestError(.unauthorized, "the JWT expired"))
            }
            guard !claims.sub.value.isEmpty else { return .failure(RequestError(.unauthorized, "the JWT's sub is empty")) }
            do throws(RequestError) {
                let bus = claims.bus
                let permissions = try Permissions(
                    publish: bus?.publish, subscribe: bus?.subscribe, groups: bus?.groups, admin: bus?.admin ?? false, rate: bus?.rate,
                    what: "JWT claim bus")
                return .success(Principal(name: claims.sub.value, permissions: permissions, expiresMs: expiresMs))
            } catch {
                return .failure(RequestError(.unauthorized, error.message))
            }
        }
    }

    /// Why a JWT was refused, in words for the client (never the token itself).
    static func describe(_ error: any Error) -> String {
        guard let error = error as? JWTError else { return "the JWT cannot be read" }
        switch error.errorType {
        case .signatureVerificationFailed: return "the JWT's signature does not verify with the broker's key"
        case .malformedToken:
            let reason = error.reason ?? ""
            for claim in ["exp", "sub"] where reason.contains("'\(claim)'") || reason.contains("\"\(claim)\"") {
                return "the JWT has no valid \(claim) claim"
            }
            return "the JWT is malformed"
        case .unsupportedAlgorithm, .signingAlgorithmFailure: return "the JWT's algorithm does not match the broker's key"
        default: return "the JWT is not valid (\(error.errorType))"
        }
    }

    /// When a connection authenticated as `principal` must be closed (epoch ms), if ever.
    public func closesAt(_ principal: Principal) -> Int64? {
        principal.expiresMs.map { $0 + settings.skewMs }
    }

    /// Now, in the authenticator's clock (epoch ms).
    public func now() -> Int64 { nowMs() }

    /// Reads the tokens file again (token mode). On success the new table replaces the old;
    /// the result is the old table's entries that are gone or changed (by hash).
    /// - Throws: ``AuthConfigError`` when the file does not parse; the old table stays.
    public func reloadTokens() throws(AuthConfigError) -> TokenTable.Changes {
        guard settings.mode == .token, let path = settings.tokensFile else { return TokenTable.Changes() }
        let table = try TokenTable.load(path)
        return tokens.withLock { current in
            defer { current = table }
            return current.changes(to: table)
        }
    }
}

/// The claims of a broker JWT: `sub`, `exp` and the `bus` permissions.
struct BusClaims: JWTPayload {
    struct Bus: Codable, Sendable {
        var publish: [String]?
        var subscribe: [String]?
        var groups: [String]?
        var admin: Bool?
        var rate: Int?
    }

    var sub: SubjectClaim
    var exp: ExpirationClaim
    var bus: Bus?

    /// Expiry is checked by the authenticator, with its clock and skew.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
