import ArgumentParser
import BrokerAuth
import Foundation
import JWTKit
import Models

/// `sbctl token`: makes credentials for a broker with `BUS_AUTH` set (SPEC §12). Both commands
/// work offline; neither talks to a broker.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make credentials: a token's hash for BUS_TOKENS_FILE, or a signed JWT.",
        subcommands: [Hash.self, JWT.self]
    )

    /// `sbctl token hash TOKEN` → `{"sha256":"<hex>"}`: the line for the token's entry in
    /// `BUS_TOKENS_FILE`, which holds hashes, never the tokens.
    struct Hash: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the SHA-256 of a token (its UTF-8 bytes) as lowercase hex, for BUS_TOKENS_FILE.",
            discussion: "Example: sbctl token hash \"$(openssl rand -hex 32)\""
        )

        @Argument(help: "The token.")
        var token: String

        @Flag(help: "Indented JSON.")
        var pretty = false

        func validate() throws {
            guard !token.isEmpty else { throw ValidationError("the token must not be empty") }
        }

        func run() {
            Output(pretty: pretty).emit(.object([("sha256", .string(TokenTable.hash(token)))]))
        }
    }

    /// `sbctl token jwt --secret S --sub NAME …` → `{"token":"<HS256 JWT>","expires":<epoch ms>}`.
    struct JWT: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign an HS256 JWT for a broker with BUS_AUTH=jwt and BUS_JWT_SECRET.",
            discussion: """
                Claims: sub, exp (now + --ttl, in whole seconds), bus {publish, subscribe, groups, admin, rate}. \
                publish and subscribe are always present (empty: nothing allowed); groups and rate only when given \
                (absent: any group, no rate limit). Example: \
                sbctl token jwt --secret "$BUS_JWT_SECRET" --sub billing --publish 'orders.>' --subscribe payments --ttl 30m
                """
        )

        @Option(help: "The HS256 secret, at least 32 bytes (the broker's BUS_JWT_SECRET; default: BUS_JWT_SECRET).")
        var secret: String?

        @Option(help: "The principal (the sub claim).")
        var sub: String

        @Option(help: "A topic pattern the principal may publish to; repeat for more.")
        var publish: [String] = []

        @Option(help: "A topic pattern the principal may subscribe to; repeat for more.")
        var subscribe: [String] = []

        @Option(name: .customLong("group"), help: "A consumer-group pattern the principal may join; repeat for more (none: any group).")
        var groups: [String] = []

        @Flag(help: "Allow the administrative HTTP routes.")
        var admin = false

        @Option(help: "Publishes per second (none: unlimited).")
        var rate: Int?

        @Option(help: "How long the token is valid: a number with s, m, h or d (90s, 30m, 1h, 7d).")
        var ttl = "1h"

        @Flag(help: "Indented JSON.")
        var pretty = false

        func validate() throws {
            guard let secret = resolvedSecret, !secret.isEmpty else { throw ValidationError("--secret (or BUS_JWT_SECRET) is required") }
            // RFC 7518 §3.2: an HS256 key is at least as long as the hash (jwt-kit asserts it).
            guard secret.utf8.count >= 32 else {
                throw ValidationError("--secret must be at least 32 bytes for HS256 (RFC 7518 §3.2); it has \(secret.utf8.count)")
            }
            guard !sub.isEmpty else { throw ValidationError("--sub must not be empty") }
            if let rate, rate < 1 { throw ValidationError("--rate must be a positive number of publishes per second") }
            _ = try Self.seconds(ttl)
            for (option, patterns) in [("--publish", publish), ("--subscribe", subscribe), ("--group", groups)] {
                for pattern in patterns {
                    do {
                        _ = try NamePattern(pattern)
                    } catch {
                        throw ValidationError("\(option): \(error.message) (patterns look like orders.created, orders.* or orders.>)")
                    }
                }
            }
        }

        var resolvedSecret: String? {
            secret ?? ProcessInfo.processInfo.environment["BUS_JWT_SECRET"].flatMap { $0.isEmpty ? nil : $0 }
        }

        func run() async throws {
            let expires = Int64(Date().timeIntervalSince1970) + (try Self.seconds(ttl))
            let claims = SignedClaims(
                sub: sub, exp: expires,
                bus: .init(publish: publish, subscribe: subscribe, groups: groups.isEmpty ? nil : groups, admin: admin, rate: rate))
            let keys = JWTKeyCollection()
            await keys.add(hmac: HMACKey(from: resolvedSecret ?? ""), digestAlgorithm: .sha256)
            let token = try await keys.sign(claims)
            Output(pretty: pretty).emit(.object([("token", .string(token)), ("expires", .int(expires * 1000))]))
        }

        /// `90s`, `30m`, `1h`, `7d` in seconds.
        static func seconds(_ text: String) throws -> Int64 {
            let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
            guard let unit = text.last.flatMap({ units[$0] }), let count = Int64(text.dropLast()), count > 0,
                count <= 10 * 365 * 86_400 / unit
            else {
                throw ValidationError("--ttl '\(text)' must be a positive number with s, m, h or d, like 90s, 30m, 1h or 7d")
            }
            return count * unit
        }
    }
}

/// The claims the broker reads from a JWT (SPEC §12), as sbctl signs them (the broker's reader is
/// `BrokerAuth`'s, with every member optional).
struct SignedClaims: JWTPayload {
    struct Grant: Codable, Sendable {
        var publish: [String]
        var subscribe: [String]
        var groups: [String]?
        var admin: Bool
        var rate: Int?
    }

    var sub: String
    /// Epoch seconds.
    var exp: Int64
    var bus: Grant

    /// Only signed here, never verified: the broker checks the claims.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
