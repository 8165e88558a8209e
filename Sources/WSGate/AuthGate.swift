import BrokerAuth
import Foundation
import Logging
import Models
import ServiceLifecycle
import StreamBroker
import Synchronization

/// The gateway's side of authentication (SPEC §12): credentials from `Authorization` headers and
/// `AUTH` frames, checked by the ``Authenticator``; the authenticated WebSocket sessions by
/// credential, so that a tokens-file reload can close those whose token was removed and give
/// the others their new permissions.
final class AuthGate: Sendable {
    let authenticator: Authenticator
    private let sessions = Mutex<[String: [ObjectIdentifier: Session]]>([:])

    init(authenticator: Authenticator) {
        self.authenticator = authenticator
    }

    var settings: AuthSettings { authenticator.settings }

    /// The token of an `Authorization: Bearer <token>` header value; nil for anything else.
    static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty || token.utf8.count > Limits.maxTokenBytes ? nil : token
    }

    /// Notes that `session` is now authenticated by `principal`'s credential (replacing the one
    /// it had, `previous`).
    func register(_ session: Session, principal: Principal, previous: Principal?) {
        let id = ObjectIdentifier(session)
        sessions.withLock { sessions in
            if let old = previous?.credential { sessions[old]?[id] = nil }
            if let credential = principal.credential { sessions[credential, default: [:]][id] = session }
        }
    }

    func unregister(_ session: Session, principal: Principal?) {
        guard let credential = principal?.credential else { return }
        sessions.withLock { sessions in
            sessions[credential]?[ObjectIdentifier(session)] = nil
            if sessions[credential]?.isEmpty == true { sessions[credential] = nil }
        }
    }

    /// Reads the tokens file again: connections of removed tokens are closed with 1008, those of
    /// changed entries go on with the new permissions. A file that does not parse changes nothing.
    func reloadTokens(logger: Logger) {
        let changes: TokenTable.Changes
        do {
            changes = try authenticator.reloadTokens()
        } catch {
            logger.error("the tokens file was not reloaded; the previous tokens stay in force", metadata: [LogKey.error: "\(error)"])
            return
        }
        let (revoked, updated) = sessions.withLock { sessions -> ([Session], [(Session, Principal)]) in
            var revoked: [Session] = []
            for credential in changes.removed { revoked += sessions.removeValue(forKey: credential)?.values ?? [:].values }
            var updated: [(Session, Principal)] = []
            for (credential, principal) in changes.changed {
                for session in sessions[credential]?.values ?? [:].values { updated.append((session, principal)) }
            }
            return (revoked, updated)
        }
        for (session, principal) in updated { session.principal = principal }
        for session in revoked { session.connection.close(code: 1008, reason: "token revoked") }
        logger.info(
            "tokens file reloaded",
            metadata: ["removed": "\(changes.removed.count)", "changed": "\(changes.changed.count)", "closed": "\(revoked.count)"])
    }
}

/// Reloads the tokens file on SIGHUP and when its contents change (checked every second).
struct TokensFileWatcher: Service {
    let gate: AuthGate
    let path: String
    let logger: Logger

    func run() async throws {
        signal(SIGHUP, SIG_IGN)
        let hangups = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        let (triggers, trigger) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        hangups.setEventHandler { trigger.yield() }
        hangups.resume()
        defer { hangups.cancel() }
        let ticker = Task {
            var last = FileManager.default.contents(atPath: path)
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let now = FileManager.default.contents(atPath: path)
                if now != last {
                    last = now
                    trigger.yield()
                }
            }
        }
        defer { ticker.cancel() }
        for await _ in triggers.cancelOnGracefulShutdown() {
            gate.reloadTokens(logger: logger)
        }
    }
}
