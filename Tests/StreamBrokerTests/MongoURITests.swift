import Testing

@testable import StreamBroker

/// `MONGO_URL` in every form users paste (the connection-string spec), and which database wins.
@Suite("MongoDB connection strings")
struct MongoURITests {
    @Test(
        arguments: [
            ("mongodb://db.example:27017", nil, "bus"),
            ("mongodb://db.example:27017/", nil, "bus"),
            ("mongodb://db.example:27017/orders", nil, "orders"),
            ("mongodb://db.example:27017/orders?replicaSet=rs0&w=majority", nil, "orders"),
            ("mongodb://db.example:27017/?replicaSet=rs0", nil, "bus"),
            ("mongodb://a.example:27017,b.example:27018,c.example/orders?replicaSet=rs0", nil, "orders"),
            ("mongodb://user:p%40ss@db.example/orders?authSource=admin", nil, "orders"),
            ("mongodb://db.example:27017/orders", "explicit", "explicit"),
            ("mongodb://db.example:27017/", "explicit", "explicit"),
        ] as [(String, String?, String)])
    func acceptsEveryForm(uri: String, explicit: String?, database: String) throws {
        let parsed = try MongoURI(uri, database: explicit)
        defer { parsed.destroy() }
        #expect(parsed.database == database)
        #expect(parsed.int32Option("serverselectiontimeoutms") == 2000)
        #expect(parsed.int32Option("connecttimeoutms") == 2000)
    }

    @Test func keepsTheUsersTimeouts() throws {
        let parsed = try MongoURI("mongodb://db.example/?serverSelectionTimeoutMS=7000&connectTimeoutMS=900", database: nil)
        defer { parsed.destroy() }
        #expect(parsed.int32Option("serverselectiontimeoutms") == 7000)
        #expect(parsed.int32Option("connecttimeoutms") == 900)
    }

    @Test(arguments: ["mongodb://", "mongodb://db.example/bad db", "http://db.example/"])
    func refusesWhatIsNotAURI(uri: String) {
        #expect(throws: BrokerError.self) { try MongoURI(uri, database: nil) }
    }

    /// The pool takes the URI's database when `MONGO_DB` is unset (no server is contacted).
    @Test func poolUsesThePathDatabase() async throws {
        let pool = try MongoClientPool(uri: "mongodb://127.0.0.1:1/shop", database: nil, maxSize: 2, threadCount: 1)
        #expect(pool.database == "shop")
        await pool.shutdown()
    }

    /// The conformance suite reaches its database through the URI's path.
    @Test func testServerURLsCarryTheDatabaseInThePath() throws {
        let url = try MongoTestServer.url(database: "abc")
        let parsed = try MongoURI(url, database: nil)
        defer { parsed.destroy() }
        #expect(parsed.database == "abc")
    }
}
