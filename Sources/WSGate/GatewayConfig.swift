import BrokerAuth
import Foundation
import Logging
import Models
import StreamBroker

/// Everything read from the environment at start (SPEC §9), validated once.
struct GatewayConfig: Sendable {
    var host = "0.0.0.0"
    var port = 7070
    var mongoURL: String?
    /// `MONGO_DB`; nil: the database in `MONGO_URL`'s path, else `bus`.
    var mongoDB: String?
    var dataDir = "./data"
    var maxFrameBytes = 1_048_576
    var outbox: [String] = []
    var auth = AuthSettings()
    var logLevel: Logger.Level = .info
    var durability: SQLiteStore.Durability = .normal
    /// Bad frames within 10 s before a connection is closed with 1008.
    var maxBadFrames = 100
    var mongoPoolSize = 128
    var mongoThreads = 8
    var broker = BrokerSettings()
    /// `BUS_TLS_CERT_FILE` + `BUS_TLS_KEY_FILE`: HTTPS and wss:// on `port` (nil: plain text).
    var tls: GatewayTLS?

    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws(Invalid) -> GatewayConfig {
        var config = GatewayConfig()
        func value(_ name: String) -> String? {
            guard let raw = env[name]?.trimmingCharacters(in: .whitespaces), !raw.isEmpty else { return nil }
            return raw
        }
        func integer(_ name: String, _ range: ClosedRange<Int64>) throws(Invalid) -> Int64? {
            guard let raw = value(name) else { return nil }
            guard let parsed = Int64(raw), range.contains(parsed) else {
                throw Invalid(description: "\(name)=\(raw) is not an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return parsed
        }
        if let host = value("BUS_HOST") { config.host = host }
        if let port = try integer("BUS_PORT", 0...65535) { config.port = Int(port) }
        config.mongoURL = value("MONGO_URL")
        if let db = value("MONGO_DB") { config.mongoDB = db }
        if let dir = value("BUS_DATA_DIR") { config.dataDir = dir }
        if let v = try integer("BUS_ACK_TIMEOUT_MS", 1...86_400_000) { config.broker.ackTimeoutMs = v }
        if let v = try integer("BUS_MAX_INFLIGHT", 1...100_000) { config.broker.maxInflight = Int(v) }
        if let v = try integer("BUS_MAX_FRAME_BYTES", 1024...(64 << 20)) { config.maxFrameBytes = Int(v) }
        if let v = try integer("BUS_LEASE_TTL_MS", 100...3_600_000) { config.broker.leaseTTLMs = v }
        if let v = try integer("BUS_GAP_TIMEOUT_MS", 1...3_600_000) { config.broker.gapTimeoutMs = v }
        if let v = try integer("BUS_POLL_MS", 10...3_600_000) { config.broker.pollMs = v }
        if let v = try integer("BUS_COMMIT_INTERVAL_MS", 0...60_000) { config.broker.commitIntervalMs = v }
        if let v = try integer("BUS_EPHEMERAL_QUEUE", 4...10_000_000) { config.broker.ephemeralQueueLimit = Int(v) }
        if let v = try integer("BUS_MAX_BAD_FRAMES", 1...1_000_000) { config.maxBadFrames = Int(v) }
        if let v = try integer("BUS_METRICS_INTERVAL_MS", 0...3_600_000) { config.broker.metricsIntervalMs = v }
        if let v = try integer("BUS_MONGO_POOL_SIZE", 2...10_000) { config.mongoPoolSize = Int(v) }
        if let v = try integer("BUS_RETENTION_INTERVAL_MS", 100...86_400_000) { config.broker.retentionIntervalMs = v }
        if let v = try integer("BUS_MONGO_THREADS", 1...256) { config.mongoThreads = Int(v) }
        if let outbox = value("BUS_OUTBOX") {
            config.outbox = outbox.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            for entry in config.outbox where entry.split(separator: ".", maxSplits: 1).count != 2 {
                throw Invalid(description: "BUS_OUTBOX entry '\(entry)' must be db.collection")
            }
        }
        if let auth = value("BUS_AUTH") {
            guard let mode = AuthSettings.Mode(rawValue: auth.lowercased()) else {
                throw Invalid(description: "BUS_AUTH=\(auth) must be none, token or jwt")
            }
            config.auth.mode = mode
        }
        config.auth.tokensFile = value("BUS_TOKENS_FILE")
        config.auth.jwtSecret = value("BUS_JWT_SECRET")
        config.auth.jwtPublicKeyFile = value("BUS_JWT_PUBLIC_KEY_FILE")
        if let v = try integer("BUS_JWT_SKEW_MS", 0...3_600_000) { config.auth.skewMs = v }
        if let v = try integer("BUS_AUTH_TIMEOUT_MS", 10...3_600_000) { config.auth.timeoutMs = v }
        config.tls = try GatewayTLS.fromEnvironment(value)
        config.broker.replicaID = value("BUS_REPLICA_ID") ?? Self.defaultReplicaID(port: config.port)
        if let level = value("BUS_LOG_LEVEL") {
            guard let parsed = Logger.Level(rawValue: level.lowercased()) else {
                throw Invalid(description: "BUS_LOG_LEVEL=\(level) must be one of trace, debug, info, notice, warning, error, critical")
            }
            config.logLevel = parsed
        }
        if let sync = value("BUS_SYNC") {
            guard let parsed = SQLiteStore.Durability(rawValue: sync.lowercased()) else {
                throw Invalid(description: "BUS_SYNC=\(sync) must be normal or full")
            }
            config.durability = parsed
        }
        // Refuse what this build cannot do rather than silently ignoring it.
        if let url = config.mongoURL, !url.hasPrefix("mongodb://") && !url.hasPrefix("mongodb+srv://") {
            throw Invalid(description: "MONGO_URL must start with mongodb:// or mongodb+srv://")
        }
        if let db = config.mongoDB, let problem = Limits.nameProblem(db, what: "MONGO_DB") { throw Invalid(description: problem) }
        if !config.outbox.isEmpty && config.mongoURL == nil {
            throw Invalid(description: "BUS_OUTBOX needs the MongoDB store: set MONGO_URL")
        }
        return config
    }

    /// `hostname:port`: stable across restarts of the broker on one host and port, so that a
    /// restarted replica recognises its own leases and takes them back at once (SPEC §7), and
    /// distinct for brokers on distinct ports.
    static func defaultReplicaID(port: Int) -> String {
        // The full host name: two hosts that share a first label (api1.east, api1.west) differ.
        let host = ProcessInfo.processInfo.hostName
        // Port 0 lets the system choose, so it names nothing stable: tell processes apart.
        return "\(host.isEmpty ? "host" : host):\(port == 0 ? "0-\(getpid())" : "\(port)")"
    }
}
