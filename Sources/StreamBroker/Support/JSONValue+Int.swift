import Models

extension JSONValue {
    static func int(_ value: some BinaryInteger) -> JSONValue { .number(Double(value), integer: Int64(value)) }
}
