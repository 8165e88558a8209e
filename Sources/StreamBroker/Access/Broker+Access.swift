import Metrics
import Models
import Synchronization

/// Authorization (SPEC §12): what an authenticated principal may do, per-principal publish
/// rates, and the record of refusals. Authentication (who a credential names) is the gateway's;
/// the broker gets a ``Principal``, or nil when `BUS_AUTH=none`.
public final class AccessControl: Sendable {
    private struct State {
        var buckets: [String: TokenBucket] = [:]
        var throttle = RefusalThrottle(perSecond: 5)
    }

    private let state = Mutex(State())
    /// Milliseconds on a monotonic clock (injected by tests).
    private let nowMs: @Sendable () -> Int64
    private let refusals: [ErrorCode: Counter]

    /// - Parameter nowMs: a monotonic clock in milliseconds; nil: the continuous clock.
    public init(nowMs: (@Sendable () -> Int64)? = nil) {
        self.nowMs = nowMs ?? { ContinuousClock.now.millisecondsSinceStart }
        var refusals: [ErrorCode: Counter] = [:]
        for code in [ErrorCode.unauthorized, .forbidden, .rateLimited] {
            refusals[code] = Counter(label: "bus_auth_refusals_total", dimensions: [("reason", code.rawValue)])
        }
        self.refusals = refusals
    }

    /// Takes one publish from `principal`'s bucket, or says when to retry.
    func takePublish(_ principal: Principal) -> Int64? {
        guard let rate = principal.permissions.rate else { return nil }
        let now = nowMs()
        return state.withLock { state in
            if state.buckets[principal.name]?.rate != rate {
                state.buckets[principal.name] = TokenBucket(rate: rate, nowMs: now)
            }
            return state.buckets[principal.name]!.take(nowMs: now)
        }
    }

    /// Counts a refusal; true when it also gets an audit record (with the count left out before).
    func countRefusal(_ code: ErrorCode, key: String) -> Int? {
        refusals[code]?.increment()
        let now = nowMs()
        return state.withLock { $0.throttle.admit(key, nowMs: now) }
    }
}

extension ContinuousClock.Instant {
    /// Milliseconds since an arbitrary, fixed start (for rate arithmetic only).
    var millisecondsSinceStart: Int64 {
        let components = (self - ContinuousClock.Instant.start).components
        return components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    private static let start = ContinuousClock.now
}

extension Broker {
    /// Topics the broker writes (`system.bus.audit`, `system.metrics`): no authenticated client
    /// may publish to them.
    public static let systemTopicPrefix = "system."

    /// Whether `principal` may publish `request`: no client-set `x-bus-*` header (in every mode),
    /// the credential's publish patterns, and its rate. The topic's ACL is checked when its config
    /// is at hand (``append(_:config:completion:)``).
    /// - Throws: `bad_request`, `forbidden` or `rate_limited` (refusals are counted and audited).
    public func authorizePublish(_ request: PublishRequest, by principal: Principal?, address: String? = nil) throws(RequestError) {
        if let name = request.headers?.pairs.first(where: { Self.isReservedHeader($0.0) })?.0 {
            throw .badRequest("header '\(name.prefix(60))' is reserved: headers starting with x-bus- are set by the broker", rid: request.rid)
        }
        guard let principal else { return }
        if request.topic.hasPrefix(Self.systemTopicPrefix) {
            throw refuse(
                .forbidden("topic '\(request.topic)' is written by the broker only", rid: request.rid),
                principal: principal.name, action: "publish", topic: request.topic)
        }
        guard principal.permissions.mayPublish(request.topic) else {
            throw refuse(
                .forbidden("principal '\(principal.name)' may not publish to topic '\(request.topic)'", rid: request.rid),
                principal: principal.name, action: "publish", topic: request.topic)
        }
        if let retryAfterMs = access.takePublish(principal) {
            throw refuse(
                RequestError(
                    .rateLimited, "principal '\(principal.name)' is over its rate of \(principal.permissions.rate ?? 0) publishes per second",
                    rid: request.rid, retryAfterMs: retryAfterMs),
                principal: principal.name, action: "publish", topic: request.topic)
        }
    }

    /// Whether a header name starts with `x-bus-`, in any case (without allocating: this runs
    /// for every header of every publish).
    static func isReservedHeader(_ name: String) -> Bool {
        var bytes = name.utf8.makeIterator()
        for expected in "x-bus-".utf8 {
            guard let byte = bytes.next() else { return false }
            let lower = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte + 32 : byte
            if lower != expected { return false }
        }
        return true
    }

    /// Whether `principal` may subscribe to `topic` (in `group`) by its credential's patterns; the
    /// topic's ACL is checked by the dispatcher, which has the config (``checkACL(_:principal:publishing:rid:)``).
    /// A `reset` of a group's positions needs `admin`, like the HTTP group reset.
    public func authorizeSubscribe(
        topic: String, group: String?, reset: Bool = false, by principal: Principal?, rid: String?
    ) throws(RequestError) {
        guard let principal else { return }
        guard principal.permissions.maySubscribe(topic) else {
            throw refuse(
                .forbidden("principal '\(principal.name)' may not subscribe to topic '\(topic)'", rid: rid),
                principal: principal.name, action: "subscribe", topic: topic)
        }
        if let group, !principal.permissions.mayJoin(group) {
            throw refuse(
                .forbidden("principal '\(principal.name)' may not join group '\(group)'", rid: rid),
                principal: principal.name, action: "subscribe", topic: topic)
        }
        if let group, reset, !principal.permissions.admin {
            throw refuse(
                .forbidden("principal '\(principal.name)' may not reset group '\(group)': it needs admin", rid: rid),
                principal: principal.name, action: "reset", topic: topic)
        }
    }

    /// Whether an admin-only operation is allowed (`principal` nil: no authentication).
    public func authorizeAdmin(_ principal: Principal?, action: String, topic: String? = nil) throws(RequestError) {
        guard let principal, !principal.permissions.admin else { return }
        throw refuse(
            .forbidden("principal '\(principal.name)' may not \(action): it needs admin"), principal: principal.name, action: action, topic: topic)
    }

    /// The topic ACL's word on a publish (`publishing`) or a subscribe by `principal`.
    public func checkACL(_ config: TopicConfig, principal: String?, publishing: Bool, rid: String?) throws(RequestError) {
        guard let principal, let acl = config.acl, !acl.permits(principal, publishing: publishing) else { return }
        let action = publishing ? "publish" : "subscribe"
        throw refuse(
            .forbidden("principal '\(principal)' may not \(action) to topic '\(config.topic)' (topic ACL)", rid: rid),
            principal: principal, action: action, topic: config.topic)
    }

    /// Counts a refusal in metrics and records it on the audit topic (a few a second per
    /// principal or address); returns the error to throw.
    @discardableResult
    public func refuse(_ error: RequestError, principal: String?, address: String? = nil, action: String, topic: String?) -> RequestError {
        let key = principal.map { "p:\($0)" } ?? "a:\(address ?? "-")"
        if let suppressed = access.countRefusal(error.code, key: key) {
            var fields: [(String, JSONValue)] = [
                ("reason", .string(error.code.rawValue)), ("action", .string(action)), ("message", .string(error.message)),
            ]
            if let principal { fields.append(("principal", .string(principal))) }
            if let address { fields.append(("address", .string(address))) }
            if suppressed > 0 { fields.append(("suppressed", .int(suppressed))) }
            audit(kind: "auth.refused", topic: topic ?? "", fields: fields)
        }
        return error
    }
}

extension RequestError {
    static func forbidden(_ message: String, rid: String? = nil) -> RequestError {
        RequestError(.forbidden, message, rid: rid)
    }
}
