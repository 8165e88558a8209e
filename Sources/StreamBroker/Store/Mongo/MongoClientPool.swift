import CMongoc
import Foundation
import Models
import NIOPosix

/// A libmongoc client pool plus the threads that use it, so that blocking driver calls never
/// run on Swift's cooperative pool.
///
/// - Important: `mongoc_client_pool_t` is thread-safe; a client popped from it is used by one
///   thread at a time and pushed back by that thread. A thread holds at most one client.
final class MongoClientPool: @unchecked Sendable {
    let database: String
    private let pool: OpaquePointer
    private let uri: OpaquePointer
    let threads: NIOThreadPool

    /// A server error (or a driver error) from one command.
    struct CommandError: Error, CustomStringConvertible {
        let domain: UInt32
        let code: UInt32
        let message: String
        /// The server's error labels, e.g. `ResumableChangeStreamError`.
        var labels: [String] = []

        var description: String { "MongoDB error \(code): \(message)" }
        var isDuplicateKey: Bool { code == 11000 }
        /// Network, selection and timeout errors: the server could not be reached.
        var isConnectivity: Bool { domain != UInt32(MONGOC_ERROR_SERVER.rawValue) && domain != UInt32(MONGOC_ERROR_WRITE_CONCERN.rawValue) }
    }

    private static let initialize: Void = { mongoc_init() }()

    /// - Parameter database: `MONGO_DB`; nil uses the database in the URI's path, else `bus`.
    init(uri uriString: String, database: String?, maxSize: Int, threadCount: Int) throws {
        _ = Self.initialize
        let parsed = try MongoURI(uriString, database: database)
        self.uri = parsed.handle
        guard let pool = mongoc_client_pool_new(parsed.handle) else {
            parsed.destroy()
            throw BrokerError(.unavailable, "cannot create a MongoDB client pool for MONGO_URL")
        }
        mongoc_client_pool_set_error_api(pool, Int32(MONGOC_ERROR_API_VERSION_2))
        mongoc_client_pool_max_size(pool, UInt32(maxSize))
        mongoc_client_pool_set_appname(pool, "stream-broker")
        self.pool = pool
        self.database = parsed.database
        threads = NIOThreadPool(numberOfThreads: threadCount)
        threads.start()
    }

    /// Destroys the pool (which ends the server sessions: network I/O, so on a pool thread).
    /// - Important: every client must have been pushed back.
    func shutdown() async {
        _ = try? await threads.runIfActive { [self] in
            mongoc_client_pool_destroy(pool)
            mongoc_uri_destroy(uri)
        }
        try? await threads.shutdownGracefully()
    }

    static func message(_ error: bson_error_t) -> String {
        withUnsafeBytes(of: error.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Runs `body` with a pooled client on the pool's threads.
    func run<R: Sendable>(_ body: @escaping @Sendable (Client) throws -> R) async throws -> R {
        try await threads.runIfActive { [self] in try withClient(body) }
    }

    /// Blocking: pops a client, runs `body`, pushes it back. Only for threads of our own.
    func withClient<R>(_ body: (Client) throws -> R) throws -> R {
        guard let client = mongoc_client_pool_pop(pool) else { throw BrokerError(.unavailable, "no MongoDB client available") }
        defer { mongoc_client_pool_push(pool, client) }
        return try body(Client(handle: client, database: database))
    }

    /// A client borrowed from the pool for one thread.
    struct Client {
        let handle: OpaquePointer
        let database: String

        /// Runs one command (given as Extended JSON text) on the broker's database and returns
        /// the reply parsed from relaxed Extended JSON.
        func command(_ json: [UInt8], database: String? = nil) throws -> JSONValue {
            var error = bson_error_t()
            guard let command = json.withUnsafeBufferPointer({ bson_new_from_json($0.baseAddress, $0.count, &error) }) else {
                throw BrokerError(.internal, "could not build a MongoDB command: \(MongoClientPool.message(error))")
            }
            defer { bson_destroy(command) }
            guard let reply = bson_new() else { throw BrokerError(.internal, "out of memory") }
            defer { bson_destroy(reply) }
            let ok = mongoc_client_command_simple(handle, database ?? self.database, command, nil, reply, &error)
            let parsed = MongoClientPool.parse(reply)
            guard ok else {
                var failure = CommandError(domain: error.domain, code: error.code, message: MongoClientPool.message(error))
                if case .array(let labels)? = parsed?["errorLabels"] {
                    failure.labels = labels.compactMap { if case .string(let s) = $0 { s } else { nil } }
                }
                throw failure
            }
            guard let parsed else { throw BrokerError(.internal, "unreadable reply from MongoDB") }
            // A write the requested write concern did not acknowledge is not durable: fail it.
            if let concern = parsed["writeConcernError"] {
                let code = UInt32(truncatingIfNeeded: MongoJSON.integer(concern["code"]) ?? 64)
                throw CommandError(
                    domain: UInt32(MONGOC_ERROR_WRITE_CONCERN.rawValue), code: code,
                    message: "write concern not satisfied: \(MongoJSON.string(concern["errmsg"]) ?? "")")
            }
            if case .array(let writeErrors)? = parsed["writeErrors"], let first = writeErrors.first {
                let code = UInt32(truncatingIfNeeded: MongoJSON.integer(first["code"]) ?? 0)
                // Inserts report per-document errors; callers that expect them read `writeErrors` themselves.
                if json.starts(with: Array(#"{"insert"#.utf8)) { return parsed }
                let message = first["errmsg"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "write error"
                throw CommandError(domain: UInt32(MONGOC_ERROR_SERVER.rawValue), code: code, message: message)
            }
            return parsed
        }
    }

    static func parse(_ document: OpaquePointer) -> JSONValue? {
        var length = 0
        guard let text = bson_as_relaxed_extended_json(document, &length) else { return nil }
        defer { bson_free(text) }
        let bytes = UnsafeRawBufferPointer(start: text, count: length)
        var parser = JSONParser(Array(bytes))
        return try? parser.parseDocument()
    }
}

/// Builds MongoDB Extended JSON text for commands.
enum MongoJSON {
    static func long(_ value: Int64) -> JSONValue { .object([("$numberLong", .string(String(value)))]) }
    static func int(_ value: Int) -> JSONValue { .number(Double(value), integer: Int64(value)) }
    static func string(_ value: String) -> JSONValue { .string(value) }

    static func integer(_ value: JSONValue?) -> Int64? {
        switch value {
        case .number(let d, let i)?: return i ?? Int64(exactly: d)
        case .object(let members)?:
            if let first = members.first, first.0 == "$numberLong", case .string(let s) = first.1 { return Int64(s) }
            return nil
        default: return nil
        }
    }

    static func string(_ value: JSONValue?) -> String? {
        if case .string(let s)? = value { return s }
        return nil
    }

    static func array(_ value: JSONValue?) -> [JSONValue] {
        if case .array(let items)? = value { return items }
        return []
    }
}
