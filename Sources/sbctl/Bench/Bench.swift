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
            fresh MONGO_DB when MONGO_URL is set), so its CPU time and context switches per event or delivery and its \
            memory per connection are reported; \
            --compare BIN2 runs a second binary right after each workload and prints each figure's ratio \
            (compare / broker). Numbers move from run to run on a shared machine: compare builds in one run. \
            --runs N repeats each workload N times (with --compare, the two binaries take turns going first) and \
            ends with summary lines: each figure's median, min and max over the runs, for each binary and for the \
            ratios.
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

    @Option(help: "Runs of each workload; more than one adds summary lines (median, min, max).")
    var runs: Int = 1

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
            ("--runs", runs), ("--events", events), ("--rate", rate), ("--seconds", seconds), ("--connections", connections),
            ("--fanout-events", fanoutEvents),
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
        for workload in workloads {
            if let broker {
                try await runStarted(workload, binaries: [broker, compare].compactMap { $0 })
            } else {
                try await runAgainstURL(workload)
            }
        }
    }

    private func runAgainstURL(_ workload: Workload) async throws {
        let endpoints = try connection.endpoints()
        let target = BenchTarget(
            label: endpoints.webSocket, webSocketURL: endpoints.webSocket, token: connection.resolvedToken, tls: try connection.tls(),
            timeout: connection.timeout)
        var all: [[(String, JSONValue)]] = []
        for run in 1...runs {
            let figures = try await Self.run(workload, target, sizes)
            all.append(figures)
            connection.output.emit(.object(header(workload, run) + [("url", .string(target.webSocketURL))] + figures))
        }
        if runs > 1 { connection.output.emit(.object(summaryHeader(workload, "url") + Self.summary(all))) }
    }

    /// Starts each binary per run (taking turns going first when there are two), then prints
    /// the ratio line of each run and, with several runs, the summaries.
    private func runStarted(_ workload: Workload, binaries: [String]) async throws {
        var figuresByBinary: [[[(String, JSONValue)]]] = binaries.map { _ in [] }
        var ratios: [[(String, JSONValue)]] = []
        for run in 1...runs {
            let order = run % 2 == 1 ? Array(binaries.indices) : binaries.indices.reversed()
            for index in order {
                let figures = try await runStarted(workload, binary: binaries[index])
                figuresByBinary[index].append(figures)
                connection.output.emit(.object(header(workload, run) + [("broker", .string(binaries[index]))] + figures))
            }
            if binaries.count == 2 {
                let ratio = Self.ratios(figuresByBinary[0][run - 1], figuresByBinary[1][run - 1])
                ratios.append(ratio)
                connection.output.emit(.object(header(workload, run) + [("ratio", .string("compare/broker"))] + ratio))
            }
        }
        guard runs > 1 else { return }
        for (index, binary) in binaries.enumerated() {
            connection.output.emit(
                .object(
                    summaryHeader(workload, index == 0 ? "broker" : "compare") + [("binary", .string(binary))] + Self.summary(figuresByBinary[index]))
            )
        }
        if binaries.count == 2 { connection.output.emit(.object(summaryHeader(workload, "ratio") + Self.summary(ratios))) }
    }

    private func runStarted(_ workload: Workload, binary: String) async throws -> [(String, JSONValue)] {
        let process = try await BrokerUnderTest.start(binary: binary, timeout: 60)
        do {
            let figures = try await Self.run(
                workload,
                BenchTarget(
                    label: binary, webSocketURL: process.webSocketURL, token: connection.resolvedToken, broker: process, timeout: connection.timeout),
                sizes)
            process.stop()
            return figures
        } catch {
            process.stop()
            throw error
        }
    }

    /// `workload` first; `run` too when there are several.
    private func header(_ workload: Workload, _ run: Int) -> [(String, JSONValue)] {
        [("workload", .string(workload.rawValue))] + (runs > 1 ? [("run", .int(run))] : [])
    }

    private func summaryHeader(_ workload: Workload, _ of: String) -> [(String, JSONValue)] {
        [("workload", .string(workload.rawValue)), ("summary", .string(of)), ("runs", .int(runs))]
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

    /// Each numeric figure's median, min and max over `runs` (nested objects too); a figure
    /// missing from a run is left out.
    static func summary(_ runs: [[(String, JSONValue)]]) -> [(String, JSONValue)] {
        guard let first = runs.first else { return [] }
        return first.compactMap { name, value -> (String, JSONValue)? in
            let values = runs.compactMap { run in run.first(where: { $0.0 == name })?.1 }
            guard values.count == runs.count else { return nil }
            switch value {
            case .number:
                let numbers = values.compactMap { value -> Double? in
                    if case .number(let number, _) = value { return number }
                    return nil
                }
                guard numbers.count == runs.count else { return nil }
                let sorted = numbers.sorted()
                let middle = sorted.count / 2
                let median = sorted.count % 2 == 1 ? sorted[middle] : ((sorted[middle - 1] + sorted[middle]) / 2 * 1000).rounded() / 1000
                return (name, .object([("median", .double(median)), ("min", .double(sorted[0])), ("max", .double(sorted[sorted.count - 1]))]))
            case .object:
                let nested = summary(
                    values.map { value in
                        if case .object(let members) = value { return members }
                        return []
                    })
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
