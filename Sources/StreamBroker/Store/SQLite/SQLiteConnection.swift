import CSQLite
import Foundation

private let SQLITE_TRANSIENT = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A connection's WAL hook; the connection keeps it.
private final class WALHook {
    let body: (Int) -> Void

    init(body: @escaping (Int) -> Void) {
        self.body = body
    }
}

/// A value bound to or read from a statement.
enum SQLValue {
    case null
    case int(Int64)
    case text(String)
    case blob([UInt8])
}

/// One SQLite connection with its prepared statements: the hot paths' in a table indexed by
/// ``Statement`` (no hashing of SQL text per call), the rest cached by their text.
///
/// - Important: not thread-safe; it is used only on the ``SQLiteWorker`` thread that owns it.
final class SQLiteConnection {
    /// The statements of the hot paths (appends, transactions, counters, reads by offset).
    enum Statement: Int, CaseIterable {
        case begin
        case commit
        case rollback
        case insertEvent
        case insertEventUnlessIDTaken
        case selectCounter
        case upsertCounter
        case selectEventByID
        case readEvents

        var sql: String {
            switch self {
            case .begin: "BEGIN IMMEDIATE"
            case .commit: "COMMIT"
            case .rollback: "ROLLBACK"
            case .insertEvent: "INSERT INTO events(topic, partition, offset, id, ts, key, headers, payload) VALUES (?,?,?,?,?,?,?,?)"
            case .insertEventUnlessIDTaken:
                "INSERT INTO events(topic, partition, offset, id, ts, key, headers, payload) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(topic, id) DO NOTHING"
            case .selectCounter: "SELECT next_offset FROM counters WHERE id = ?"
            case .upsertCounter:
                "INSERT INTO counters(id, next_offset) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET next_offset = excluded.next_offset"
            case .selectEventByID: "SELECT topic, partition, offset, id, ts, key, headers, payload FROM events WHERE topic = ? AND id = ?"
            case .readEvents:
                """
                SELECT topic, partition, offset, id, ts, key, headers, payload FROM events
                WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?
                """
            }
        }
    }

    /// How long a statement waits for a lock another connection holds.
    static let busyTimeoutMilliseconds: Int32 = 5000

    let handle: OpaquePointer
    /// Kept alive as long as the connection, which calls it after each commit.
    private var walHook: WALHook?
    private var statements: [String: OpaquePointer] = [:]
    private var prepared: [OpaquePointer?] = Array(repeating: nil, count: Statement.allCases.count)

    /// The process-wide settings, made before the library's first use (SQLite refuses them
    /// after): no memory statistics, which would take a global mutex on every allocation.
    /// Whether they took (false when something used SQLite first).
    static let isLibraryConfigured: Bool = sb_sqlite3_disable_memstatus() == SQLITE_OK

    init(path: String) throws {
        _ = Self.isLibraryConfigured
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let db { sqlite3_close_v2(db) }
            throw BrokerError(.unavailable, "cannot open SQLite database at \(path): \(message)")
        }
        handle = db
        sqlite3_busy_timeout(db, Self.busyTimeoutMilliseconds)
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        for case let statement? in prepared { sqlite3_finalize(statement) }
        sqlite3_close_v2(handle)
    }

    func error(_ context: String) -> BrokerError {
        Self.error(context, handle)
    }

    static func error(_ context: String, _ db: OpaquePointer) -> BrokerError {
        BrokerError(.unavailable, "SQLite \(context): \(String(cString: sqlite3_errmsg(db)))")
    }

    /// Waits up to `milliseconds` for a lock held by another connection before `SQLITE_BUSY`.
    func setBusyTimeout(milliseconds: Int32) {
        sqlite3_busy_timeout(handle, milliseconds)
    }

    /// Turns SQLite's auto-checkpoint off and calls `body` after each commit instead, with the
    /// number of frames in the WAL, on the thread that committed.
    func onWALCommit(_ body: @escaping (_ walPages: Int) -> Void) {
        let hook = WALHook(body: body)
        walHook = hook
        sqlite3_wal_hook(
            handle,
            { context, _, _, pages in
                if let context { Unmanaged<WALHook>.fromOpaque(context).takeUnretainedValue().body(Int(pages)) }
                return SQLITE_OK
            }, Unmanaged.passUnretained(hook).toOpaque())
    }

    enum CheckpointMode {
        /// Copies what it can without waiting for or blocking anyone.
        case passive
        /// Waits (busy timeout) for the writer and the readers, copies everything, and waits
        /// for the readers to leave the WAL, so that the next write starts it over.
        case restart

        var code: Int32 { self == .passive ? SQLITE_CHECKPOINT_PASSIVE : SQLITE_CHECKPOINT_RESTART }
    }

    /// What a checkpoint did: frames in the WAL and frames copied into the database, or the
    /// error (`SQLITE_BUSY`: someone else held it back).
    struct CheckpointResult {
        var code: Int32
        var walPages: Int
        var copiedPages: Int
        var complete: Bool { code == SQLITE_OK && copiedPages == walPages }
    }

    /// Checkpoints the WAL (of a file database in WAL mode) with this connection.
    func checkpoint(_ mode: CheckpointMode) -> CheckpointResult {
        var log: Int32 = -1
        var copied: Int32 = -1
        let rc = sqlite3_wal_checkpoint_v2(handle, nil, mode.code, &log, &copied)
        return CheckpointResult(code: rc, walPages: Int(log), copiedPages: Int(copied))
    }

    /// Rows inserted, updated or deleted on this connection so far (DDL is not counted).
    var totalChanges: Int64 { sqlite3_total_changes64(handle) }

    /// True while a transaction is open (SQLite ends one by itself after some errors).
    var inTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &message) != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(message)
            throw BrokerError(.unavailable, "SQLite: \(text) in \(sql.prefix(80))")
        }
    }

    private func compile(_ sql: String) throws -> OpaquePointer {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK, let statement else {
            throw error("prepare")
        }
        return statement
    }

    private func prepare(_ sql: String) throws -> OpaquePointer {
        if let cached = statements[sql] {
            sqlite3_reset(cached)
            sqlite3_clear_bindings(cached)
            return cached
        }
        let statement = try compile(sql)
        statements[sql] = statement
        return statement
    }

    /// A hot-path statement, prepared on first use; every parameter must be bound before it runs.
    func statement(_ which: Statement) throws -> Prepared {
        if let statement = prepared[which.rawValue] { return Prepared(db: handle, statement: statement) }
        let statement = try compile(which.sql)
        prepared[which.rawValue] = statement
        return Prepared(db: handle, statement: statement)
    }

    /// Rows changed by the last finished statement.
    var changes: Int { Int(sqlite3_changes(handle)) }

    /// Runs a hot-path statement that takes no parameters (`BEGIN`, `COMMIT`, `ROLLBACK`).
    func run(_ which: Statement) throws {
        try statement(which).run()
    }

    private func bind(_ statement: OpaquePointer, _ values: [SQLValue]) {
        let prepared = Prepared(db: handle, statement: statement)
        for (index, value) in values.enumerated() {
            let position = Int32(index + 1)
            switch value {
            case .null: sqlite3_bind_null(statement, position)
            case .int(let v): prepared.bind(position, v)
            case .text(let v): prepared.bind(position, v)
            case .blob(let v): prepared.bind(position, blob: v)
            }
        }
    }

    /// Runs a statement that returns no rows; returns the number of changed rows.
    @discardableResult
    func run(_ sql: String, _ values: [SQLValue] = []) throws -> Int {
        let statement = try prepare(sql)
        bind(statement, values)
        try Prepared(db: handle, statement: statement).run()
        return Int(sqlite3_changes(handle))
    }

    /// Runs a query and hands each row to `row`.
    func query(_ sql: String, _ values: [SQLValue] = [], row: (Row) throws -> Void) throws {
        let statement = try prepare(sql)
        bind(statement, values)
        try Prepared(db: handle, statement: statement).query(row: row)
    }

    /// A prepared statement in use: bind its parameters (from 1), then ``run()`` or ``query(row:)``,
    /// which reset it for the next use.
    struct Prepared {
        let db: OpaquePointer
        let statement: OpaquePointer

        func bind(_ position: Int32, _ value: Int64) {
            sqlite3_bind_int64(statement, position, value)
        }

        func bind(_ position: Int32, _ value: String?) {
            guard var value else {
                sqlite3_bind_null(statement, position)
                return
            }
            guard !value.isEmpty else {
                // A nil pointer would bind NULL: an empty string is still text.
                sqlite3_bind_text(statement, position, "", 0, SQLITE_TRANSIENT)
                return
            }
            let bound =
                value.utf8.withContiguousStorageIfAvailable { utf8 in
                    utf8.withMemoryRebound(to: CChar.self) { chars in
                        _ = sqlite3_bind_text(statement, position, chars.baseAddress, Int32(chars.count), SQLITE_TRANSIENT)
                    }
                    return true
                } ?? false
            if !bound {
                value.withUTF8 { utf8 in
                    utf8.withMemoryRebound(to: CChar.self) { chars in
                        _ = sqlite3_bind_text(statement, position, chars.baseAddress, Int32(chars.count), SQLITE_TRANSIENT)
                    }
                }
            }
        }

        func bind(_ position: Int32, blob value: [UInt8]?) {
            guard let value else {
                sqlite3_bind_null(statement, position)
                return
            }
            value.withUnsafeBytes { raw in
                // A zero-length blob must still be a blob, not NULL: give it a non-nil pointer.
                let base = raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)
                _ = sqlite3_bind_blob(statement, position, base, Int32(raw.count), SQLITE_TRANSIENT)
            }
        }

        /// Steps the statement to its end (it returns no rows, or they are not wanted).
        func run() throws {
            let rc = sqlite3_step(statement)
            guard rc == SQLITE_DONE || rc == SQLITE_ROW else {
                let error = SQLiteConnection.error("step", db)
                sqlite3_reset(statement)
                throw error
            }
            sqlite3_reset(statement)
        }

        /// Steps through the rows, handing each to `row`.
        func query(row: (Row) throws -> Void) throws {
            defer { sqlite3_reset(statement) }
            while true {
                let rc = sqlite3_step(statement)
                if rc == SQLITE_DONE { return }
                guard rc == SQLITE_ROW else { throw SQLiteConnection.error("step", db) }
                try row(Row(statement: statement))
            }
        }
    }

    struct Row {
        let statement: OpaquePointer

        func int(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }

        func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }

        func text(_ column: Int32) -> String? {
            guard let pointer = sqlite3_column_text(statement, column) else { return nil }
            let count = Int(sqlite3_column_bytes(statement, column))
            return String(decoding: UnsafeBufferPointer(start: pointer, count: count), as: UTF8.self)
        }

        func bytes(_ column: Int32) -> [UInt8]? {
            guard !isNull(column) else { return nil }
            let count = Int(sqlite3_column_bytes(statement, column))
            guard count > 0, let pointer = sqlite3_column_blob(statement, column) else { return [] }
            return Array(UnsafeRawBufferPointer(start: pointer, count: count))
        }
    }
}
