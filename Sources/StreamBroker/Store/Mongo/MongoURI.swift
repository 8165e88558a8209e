import CMongoc

/// A MongoDB connection string parsed by libmongoc, in every form of the connection-string
/// spec that libmongoc accepts: one or several hosts, a trailing slash, a database in the
/// path, options, `mongodb+srv://` (when libmongoc was built with DNS support).
///
/// - Important: holds a `mongoc_uri_t` that one owner (the client pool) destroys, once.
struct MongoURI {
    let handle: OpaquePointer
    /// The database the broker uses: the explicit one (`MONGO_DB`) when given, else the one in
    /// the URI's path, else `bus`.
    let database: String

    /// The default for a missing path database and `MONGO_DB`.
    static let defaultDatabase = "bus"

    /// Parses `text`; adds 2 s server-selection and connect timeouts unless it sets its own
    /// (libmongoc's default of 30 s would hold `/readyz` and start-up when the server is away).
    /// - Throws: `BrokerError(.badRequest)` with libmongoc's reason when the string is invalid.
    init(_ text: String, database explicit: String?) throws {
        var error = bson_error_t()
        guard let uri = mongoc_uri_new_with_error(text, &error) else {
            throw BrokerError(.badRequest, "MONGO_URL is not a valid MongoDB URI: \(MongoClientPool.message(error))")
        }
        for option in ["serverselectiontimeoutms", "connecttimeoutms"] where !mongoc_uri_has_option(uri, option) {
            _ = mongoc_uri_set_option_as_int32(uri, option, 2000)
        }
        handle = uri
        if let explicit {
            database = explicit
        } else if let path = mongoc_uri_get_database(uri), path.pointee != 0 {
            database = String(cString: path)
        } else {
            database = Self.defaultDatabase
        }
    }

    /// The option as the pool will use it (for tests and logs).
    func int32Option(_ name: String) -> Int32 { mongoc_uri_get_option_as_int32(handle, name, -1) }

    /// Frees the handle (when no pool took it over).
    func destroy() { mongoc_uri_destroy(handle) }
}
