import Crypto
import Foundation
import Models

/// The tokens file of `BUS_AUTH=token` (SPEC §12): principals by the SHA-256 of their token.
/// The file holds no secrets.
public struct TokenTable: Sendable, Equatable {
    /// By lowercase hex SHA-256 of the token.
    public let entries: [String: Principal]

    public init(entries: [String: Principal]) { self.entries = entries }

    /// The lowercase hex SHA-256 of a token's UTF-8 bytes: how the file names a token.
    public static func hash(_ token: String) -> String {
        SHA256.hash(data: Array(token.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    static func load(_ path: String) throws(AuthConfigError) -> TokenTable {
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw AuthConfigError("BUS_TOKENS_FILE=\(path) cannot be read: \(error.localizedDescription)")
        }
        do throws(RequestError) {
            return try parse(bytes)
        } catch {
            throw AuthConfigError("BUS_TOKENS_FILE=\(path): \(error.message)")
        }
    }

    /// Parses `{"tokens":[{"name","sha256","publish"?,"subscribe"?,"groups"?,"admin"?,"rate"?}]}`.
    public static func parse(_ bytes: [UInt8]) throws(RequestError) -> TokenTable {
        let document: JSONValue
        do {
            var parser = JSONParser(bytes)
            document = try parser.parseDocument()
        } catch {
            throw .badRequest("not valid JSON: \(error)")
        }
        guard case .object(let members) = document, members.count == 1, case .array(let items)? = document["tokens"] else {
            throw .badRequest("must be an object {\"tokens\":[...]}")
        }
        var entries: [String: Principal] = [:]
        var names: Set<String> = []
        for (index, item) in items.enumerated() {
            let what = "tokens[\(index)]"
            guard case .string(let name)? = item["name"], !name.isEmpty, name.utf8.count <= Limits.maxNameLength else {
                throw .badRequest("\(what) needs a name (1–\(Limits.maxNameLength) bytes)")
            }
            guard case .string(let hash)? = item["sha256"], hash.utf8.count == 64, hash.allSatisfy(\.isHexDigit) else {
                throw .badRequest("\(what) (\(name)) needs sha256: the 64 hex digits of the token's SHA-256")
            }
            let permissions = try Permissions.decode(item, what: "\(what) (\(name))", extra: ["name", "sha256"])
            let key = hash.lowercased()
            guard entries[key] == nil else { throw .badRequest("\(what) (\(name)) repeats another entry's sha256") }
            guard names.insert(name).inserted else { throw .badRequest("\(what): the name '\(name)' is used twice") }
            entries[key] = Principal(name: name, permissions: permissions, credential: key)
        }
        return TokenTable(entries: entries)
    }

    /// What a reload changed for connections authenticated with the old table.
    public struct Changes: Sendable, Equatable {
        /// Hashes no longer in the file: their connections are closed.
        public var removed: Set<String> = []
        /// Entries whose permissions changed: their connections go on with the new ones.
        public var changed: [String: Principal] = [:]

        public init() {}
    }

    func changes(to new: TokenTable) -> Changes {
        var changes = Changes()
        for (hash, old) in entries {
            if let replacement = new.entries[hash] {
                if replacement != old { changes.changed[hash] = replacement }
            } else {
                changes.removed.insert(hash)
            }
        }
        return changes
    }
}
