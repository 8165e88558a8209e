import ArgumentParser
import Foundation
import Models

/// `sbctl bench`: the workloads of SPEC §11 against a broker, or two brokers in one run.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the benchmark workloads of SPEC §11 and print their figures, one line per workload and broker.",
        discussion: """
            w1: a work queue (100,000 events, 1 publisher with at most 1,000 unconfirmed, 1 group of 4 consumers with \
            window 256, all acked). w2: fan-out (1,000 events/s for 15 s, 10 groups of 1 consumer). w3: connections \
            (5,000 WebSocket connections with an ephemeral subscription each, 20 events 1 s apart). Payloads are 256 \
            bytes of JSON. With --broker BIN the broker is started here (a free port, a fresh data directory, and a \
            fresh MONGO_DB when MONGO_URL is set), so its CPU time per event and memory per connection are reported; \
            --compare BIN2 runs a second binary right after each workload and prints each figure's ratio \
            (compare / broker). Numbers move from run to run on a shared machine: compare builds in one run.
            """
    )

    enum Workload: String, ExpressibleByArgument, CaseIterable {
        case w1, w2, w3, all
    }

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "w1, w2, w3 or all.")
    var workload: Workload = .all

    @Option(help: "A broker executable to start for the run (instead of --url).")
    var broker: String?

    @Option(help: "A second broker executable, run after each workload; ratios compare/broker are printed.")
    var compare: String?

    @Flag(help: "Small sizes that run in seconds (w1 5,000 events; w2 200/s for 3 s; w3 200 connections, 3 events).")
    var quick = false

    @Option(help: "w1: events to publish.")
    var events: Int?

    @Option(help: "w2: events per second.")
    var rate: Int?

    @Option(help: "w2: seconds to publish for.")
    var seconds: Int?

    @Option(help: "w3: connections.")
    var connections: Int?

    @Option(help: "w3: events, one per second.")
    var fanoutEvents: Int?

    func validate() throws {
        if compare != nil && broker == nil { throw ValidationError("--compare needs --broker (the first binary)") }
        if broker != nil && connection.url != nil { throw ValidationError("give either --url or --broker, not both") }
        for (name, value) in [
            ("--events", events), ("--rate", rate), ("--seconds", seconds), ("--connections", connections), ("--fanout-events", fanoutEvents),
        ] {
            if let value, value < 1 { throw ValidationError("\(name) must be at least 1") }
        }
    }

    var sizes: WorkloadSizes {
        var sizes = quick ? WorkloadSizes.quick : WorkloadSizes()
        if let events { sizes.w1Events = events }
        if let rate { sizes.w2Rate = rate }
        if let seconds { sizes.w2Seconds = seconds }
        if let connections { sizes.w3Connections = connections }
        if let fanoutEvents { sizes.w3Events = fanoutEvents }
        return sizes
    }

    func run() async throws {
        Self.raiseOpenFileLimit()
        let workloads = workload == .all ? [Workload.w1, .w2, .w3] : [workload]
        let output = connection.output
        for workload in workloads {
            var runs: [[(String, JSONValue)]] = []
            if broker == nil {
                let target = BenchTarget(
                    label: try connection.endpoints().webSocket, webSocketURL: try connection.endpoints().webSocket, token: connection.resolvedToken,
                    timeout: connection.timeout)
                let figures = try await Self.run(workload, target, sizes)
                output.emit(.object([("workload", .string(workload.rawValue)), ("url", .string(target.webSocketURL))] + figures))
                continue
            }
            for binary in [broker, compare].compactMap({ $0 }) {
                let process = try await BrokerUnderTest.start(binary: binary, timeout: 60)
                let figures: [(String, JSONValue)]
                do {
                    figures = try await Self.run(
                        workload,
                        BenchTarget(
                            label: binary, webSocketURL: process.webSocketURL, token: connection.resolvedToken, broker: process,
                            timeout: connection.timeout),
                        sizes)
                    process.stop()
                } catch {
                    process.stop()
                    throw error
                }
                runs.append(figures)
                output.emit(.object([("workload", .string(workload.rawValue)), ("broker", .string(binary))] + figures))
            }
            if runs.count == 2 {
                output.emit(
                    .object([("workload", .string(workload.rawValue)), ("ratio", .string("compare/broker"))] + Self.ratios(runs[0], runs[1])))
            }
        }
    }

    static func run(_ workload: Workload, _ target: BenchTarget, _ sizes: WorkloadSizes) async throws -> [(String, JSONValue)] {
        switch workload {
        case .w1: try await Workloads.w1(target, sizes)
        case .w2: try await Workloads.w2(target, sizes)
        case .w3, .all: try await Workloads.w3(target, sizes)
        }
    }

    /// Each numeric figure of `second` divided by the same figure of `first` (nested objects too).
    static func ratios(_ first: [(String, JSONValue)], _ second: [(String, JSONValue)]) -> [(String, JSONValue)] {
        second.compactMap { name, value -> (String, JSONValue)? in
            guard let base = first.first(where: { $0.0 == name })?.1 else { return nil }
            switch (base, value) {
            case (.number(let a, _), .number(let b, _)) where a != 0:
                return (name, .double((b / a * 1000).rounded() / 1000))
            case (.object(let a), .object(let b)):
                let nested = ratios(a, b)
                return nested.isEmpty ? nil : (name, .object(nested))
            default:
                return nil
            }
        }
    }

    /// W3 opens thousands of sockets here and in a broker started here (which inherits the limit).
    static func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}
