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
    /// - Throws: what `body` throws, a ``CommandError`` mapped to a ``BrokerError``.
    func run<R: Sendable>(_ body: @escaping @Sendable (Client) throws -> R) async throws -> R {
        try await threads.runIfActive { [self] in try withClient(body) }
    }

    /// Blocking: pops a client, runs `body`, pushes it back. Only for threads of our own.
    /// - Throws: what `body` throws, a ``CommandError`` mapped to a ``BrokerError``.
    func withClient<R>(_ body: (Client) throws -> R) throws -> R {
        guard let client = mongoc_client_pool_pop(pool) else { throw BrokerError(.unavailable, "no MongoDB client available") }
        defer { mongoc_client_pool_push(pool, client) }
        do {
            return try body(Client(handle: client, database: database))
        } catch let error as CommandError {
            throw BrokerError(mongo: error)
        }
    }

    /// What a command does with the `writeErrors` of its reply.
    enum WriteErrors {
        /// Throws the first one as a ``CommandError``.
        case `throw`
        /// Returns the reply; the caller reads `writeErrors` itself (per-document insert errors).
        case `return`
    }

    /// A client borrowed from the pool for one thread.
    struct Client {
        let handle: OpaquePointer
        let database: String

        /// Runs one command (given as Extended JSON text) on the broker's database and returns
        /// the reply parsed from relaxed Extended JSON.
        ///
        /// - Throws: ``CommandError`` for a server or driver error, an unsatisfied write concern,
        ///   or (unless `writeErrors` is `.return`) a write error.
        func command(_ json: [UInt8], database: String? = nil, writeErrors: WriteErrors = .throw) throws -> JSONValue {
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
            if case .throw = writeErrors, let first = MongoJSON.array(parsed["writeErrors"]).first {
                let code = UInt32(truncatingIfNeeded: MongoJSON.integer(first["code"]) ?? 0)
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

extension BrokerError {
    /// The one mapping of a MongoDB error to the broker's: the store is unavailable. The
    /// MongoDB error stays `underlying` (see ``mongoError``).
    init(mongo error: MongoClientPool.CommandError) {
        self.init(.unavailable, "MongoDB: \(error.message)", underlying: error)
    }

    /// The MongoDB error this error maps, if it maps one.
    var mongoError: MongoClientPool.CommandError? { underlying as? MongoClientPool.CommandError }

    /// A unique-index violation (MongoDB error 11000).
    var isDuplicateKey: Bool { mongoError?.isDuplicateKey == true }
}
