@testable import StreamBroker

/// Takes what `connection` was sent, as the gateway's drain does, until a frame satisfies
/// `match`: that frame, or "" once the connection is closing with nothing left to take (or
/// after ten seconds of real time).
func frame(from connection: ClientConnection, where match: (String) -> Bool) async -> String {
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while ContinuousClock.now < deadline {
        switch connection.take(maxBytes: 1 << 30) {
        case .frames(let frames):
            connection.didWrite(frames.count)
            if let found = frames.map({ String(decoding: $0.bytes, as: UTF8.self) }).first(where: match) { return found }
        case .close:
            return ""
        case .idle:
            try? await Task.sleep(for: .milliseconds(2))
        }
    }
    return ""
}
