import ArgumentParser
import Foundation

/// `sbctl`: publish, subscribe, administer and benchmark a StreamBroker from the shell (SPEC §13).
///
/// Output is one JSON object per line (`--pretty` indents it). Exit status: 0 on success, 1 when
/// the broker refuses a request (its `ERROR` code and message go to stderr) or cannot be reached,
/// 2 on bad usage.
@main
struct SBCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sbctl",
        abstract: "Publish, subscribe, administer and benchmark a StreamBroker.",
        discussion: """
            Every command that talks to the broker takes --url (default: BUS_URL, else ws://127.0.0.1:7070/ws), \
            --token (default: BUS_TOKEN) and, for a wss:// broker with a private CA, --cacert (default: BUS_CACERT). \
            Output is one JSON object per line unless --pretty. Exit status: 0 success, 1 an error from the broker \
            (its code on stderr) or the broker unreachable, 2 bad usage.
            """,
        subcommands: [Pub.self, Sub.self, Topics.self, Groups.self, DeadLetters.self, Bench.self, Token.self]
    )

    /// Runs the command and maps its outcome to SPEC §13's exit statuses (ArgumentParser's own
    /// status for a usage error is 64; ours is 2).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
            Foundation.exit(0)
        } catch let failure as CommandFailure {
            standardError("error: \(failure.code): \(failure.message)")
            Foundation.exit(1)
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                Foundation.exit(0)
            }
            if !message.isEmpty { standardError(message) }
            Foundation.exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}

/// Writes one line to standard error.
func standardError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
