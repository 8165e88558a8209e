import ArgumentParser
import Models

/// `earliest`, `latest`, `offset:N` or `time:MS` (epoch milliseconds) on the command line.
extension StartPosition: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "earliest": self = .earliest
        case "latest": self = .latest
        default:
            if argument.hasPrefix("offset:"), let value = Int64(argument.dropFirst("offset:".count)), value >= 0 {
                self = .offset(value)
            } else if argument.hasPrefix("time:"), let value = Int64(argument.dropFirst("time:".count)), value >= 0 {
                self = .timestamp(value)
            } else {
                return nil
            }
        }
    }

    public static var allValueStrings: [String] { ["earliest", "latest", "offset:N", "time:MS"] }

    public var defaultValueDescription: String {
        switch self {
        case .earliest: "earliest"
        case .latest: "latest"
        case .offset(let value): "offset:\(value)"
        case .timestamp(let value): "time:\(value)"
        }
    }
}
