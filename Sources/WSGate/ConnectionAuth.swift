import Models

/// Where one WebSocket connection stands with authentication (SPEC §12), as a state machine
/// without effects: the handler feeds it frames, verification results and timer firings, and
/// carries out the actions it returns. Times are epoch milliseconds.
struct ConnectionAuth {
    enum State: Equatable {
        /// `BUS_AUTH=none`: every frame goes through.
        case open
        /// No credential yet; closed at `deadline`.
        case waiting(deadline: Int64)
        /// Authenticated; closed at `closesAt` unless refreshed.
        case authenticated(Principal, closesAt: Int64?)
    }

    enum Action: Equatable {
        /// Hand the frame to the session.
        case deliver(ClientFrame)
        /// Check a credential; its result comes back through ``verified(_:rid:now:)``.
        case verify(token: String, rid: String?)
        /// Send a frame (AUTHED).
        case reply([UInt8])
        /// Send an ERROR; `bad`: it counts towards the bad-frame limit.
        case refuse(RequestError, bad: Bool)
        /// The session now acts as `principal` (which replaces `previous`).
        case become(Principal, previous: Principal?)
        /// Fire ``timerFired(now:)`` at this time (nil: no timer).
        case arm(at: Int64?)
        case close(code: UInt16, reason: String)
    }

    /// Frames held while the first credential is verified, at most.
    static let maxHeld = 256

    private(set) var state: State
    /// Verifications under way.
    private var verifying = 0
    /// Frames that arrived while the first credential was being verified.
    private var held: [ClientFrame] = []

    /// - Parameters:
    ///   - enabled: whether credentials are needed at all.
    ///   - principal: authenticated by the upgrade request's `Authorization` header.
    ///   - closesAt: when that credential stops being honoured.
    init(enabled: Bool, principal: Principal?, closesAt: Int64?, now: Int64, timeoutMs: Int64) {
        if !enabled {
            state = .open
        } else if let principal {
            state = .authenticated(principal, closesAt: closesAt)
        } else {
            state = .waiting(deadline: now + timeoutMs)
        }
    }

    /// The timer to arm when the connection starts.
    var initialTimer: Int64? {
        switch state {
        case .open: nil
        case .waiting(let deadline): deadline
        case .authenticated(_, let closesAt): closesAt
        }
    }

    /// Whether `frame` goes straight to the session (the common case, decided without building
    /// actions): any frame but `AUTH` once the connection may send frames.
    func passes(_ frame: ClientFrame) -> Bool {
        if case .auth = frame { return false }
        if case .waiting = state { return false }
        return true
    }

    mutating func received(_ frame: ClientFrame) -> [Action] {
        if passes(frame) { return [.deliver(frame)] }
        if case .auth(let token, let rid) = frame {
            if case .open = state {
                return [.reply(ServerFrame.authed(principal: "anonymous", expiresMs: nil, rid: rid))]
            }
            verifying += 1
            return [.verify(token: token, rid: rid)]
        }
        // Waiting for a credential: held while one is being verified, else refused.
        if verifying > 0 && held.count < Self.maxHeld {
            held.append(frame)
            return []
        }
        return [.refuse(Self.unauthorized(frame.rid), bad: true)]
    }

    /// The result of a ``Action/verify(token:rid:)``; `closesAt` is when the credential stops
    /// being honoured.
    mutating func verified(_ result: Result<(Principal, closesAt: Int64?), RequestError>, rid: String?) -> [Action] {
        verifying = max(0, verifying - 1)
        switch result {
        case .success(let (principal, closesAt)):
            let previous: Principal?
            if case .authenticated(let old, _) = state { previous = old } else { previous = nil }
            if let previous, previous.name != principal.name {
                // A refresh extends a connection's credential; it does not change who it is.
                let message = "a refresh must name the same principal ('\(previous.name)'), not '\(principal.name)'"
                return [.refuse(RequestError(.unauthorized, message, rid: rid), bad: true)]
            }
            state = .authenticated(principal, closesAt: closesAt)
            var actions: [Action] = [
                .become(principal, previous: previous),
                .reply(ServerFrame.authed(principal: principal.name, expiresMs: principal.expiresMs, rid: rid)),
                .arm(at: closesAt),
            ]
            actions += held.map(Action.deliver)
            held = []
            return actions
        case .failure(var error):
            error.rid = rid
            var actions: [Action] = [.refuse(error, bad: true)]
            if verifying == 0, case .waiting = state {
                // Nothing else may authenticate the held frames: they are refused in order.
                actions += held.map { .refuse(Self.unauthorized($0.rid), bad: false) }
                held = []
            }
            return actions
        }
    }

    mutating func timerFired(now: Int64) -> [Action] {
        switch state {
        case .open:
            return []
        case .waiting(let deadline):
            return now >= deadline ? [.close(code: 1008, reason: "authentication timeout")] : [.arm(at: deadline)]
        case .authenticated(_, let closesAt?):
            return now >= closesAt ? [.close(code: 1008, reason: "token expired")] : [.arm(at: closesAt)]
        case .authenticated(_, nil):
            return []
        }
    }

    /// The principal the connection acts as, if authenticated.
    var principal: Principal? {
        if case .authenticated(let principal, _) = state { return principal }
        return nil
    }

    static func unauthorized(_ rid: String?) -> RequestError {
        RequestError(.unauthorized, "authenticate first: send {\"type\":\"AUTH\",\"token\":\"...\"} or connect with Authorization: Bearer", rid: rid)
    }
}
