import NIOCore

/// The decisions of one WebSocket connection's life after the upgrade: keep-alive pings, the
/// close handshake and the timers that bound it. A pure state machine: the channel handler
/// feeds it events and carries out the actions it returns.
///
/// One timer at a time: the ping timer while the connection is open; the close watchdog once
/// the broker asked to close but the close frame cannot leave yet (the client stopped reading);
/// the close-handshake timer once the close frame left and the client's answer is awaited.
struct WebSocketLifecycle: Sendable {
    enum Timer: Equatable, Sendable {
        /// Every `pingInterval`: ping, or close a peer that did not answer the last ping.
        case ping
        /// The close frame waits behind frames the client does not read.
        case closeWatchdog
        /// The close frame left; the client's close frame is awaited.
        case closeHandshake
    }

    enum Action: Equatable, Sendable {
        case sendPing
        /// (Re)arm the one timer.
        case arm(Timer)
        /// Ask the broker side to close (answering the client's close frame).
        case requestClose
        case closeSocket
    }

    static let pingInterval: TimeAmount = .seconds(30)
    static let closeWatchdog: TimeAmount = .seconds(5)
    static let closeHandshake: TimeAmount = .seconds(2)

    static func delay(_ timer: Timer) -> TimeAmount {
        switch timer {
        case .ping: pingInterval
        case .closeWatchdog: closeWatchdog
        case .closeHandshake: closeHandshake
        }
    }

    private(set) var timer: Timer = .ping
    private(set) var awaitingPong = false
    private(set) var closeSent = false
    private(set) var peerClosed = false

    /// Anything arrived from the client: it is alive.
    mutating func heardFromPeer() {
        awaitingPong = false
    }

    /// The armed timer fired.
    mutating func timerFired() -> [Action] {
        switch timer {
        case .ping:
            if awaitingPong { return [.closeSocket] }
            awaitingPong = true
            return [.sendPing, .arm(.ping)]
        case .closeWatchdog, .closeHandshake:
            return [.closeSocket]
        }
    }

    /// The broker asked to close, and the close frame waits behind unread frames.
    mutating func closeDelayed() -> [Action] {
        guard timer == .ping else { return [] }
        timer = .closeWatchdog
        return [.arm(.closeWatchdog)]
    }

    /// The close frame was written: close the socket once it left if the client already sent
    /// its close frame, else wait for that.
    mutating func closeFrameWritten() -> Action {
        closeSent = true
        if peerClosed { return .closeSocket }
        timer = .closeHandshake
        return .arm(.closeHandshake)
    }

    /// The client sent a close frame.
    mutating func peerCloseReceived() -> Action {
        peerClosed = true
        return closeSent ? .closeSocket : .requestClose
    }
}
