import Foundation
import Models

/// Standard output: one JSON object per line, or indented with `--pretty`.
struct Output: Sendable {
    var pretty: Bool

    func emit(_ value: JSONValue) {
        emit(value.jsonBytes)
    }

    /// Writes one JSON document (the bytes are valid JSON) and flushes, so a pipe sees each line
    /// as it comes.
    func emit(_ json: [UInt8]) {
        var line = json
        if pretty, let object = try? JSONSerialization.jsonObject(with: Data(json), options: [.fragmentsAllowed]),
            let indented = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed])
        {
            line = Array(indented)
        }
        line.append(UInt8(ascii: "\n"))
        FileHandle.standardOutput.write(Data(line))
    }
}
