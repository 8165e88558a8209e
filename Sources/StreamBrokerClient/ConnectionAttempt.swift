import Synchronization

/// One attempt of the reconnect loop to open a WebSocket connection, watched so that an
/// attempt that never gets an answer does not stop the loop.
///
/// A server may accept the TCP connection and never answer the upgrade. An attempt not open
/// after the connect timeout is abandoned and cancelled (which closes its socket): the loop goes
/// on, and should the connection open after all, it is closed at once.
final class ConnectionAttempt: Sendable {
    private enum Phase {
        case pending, opened, abandoned
    }

    private struct Waiter {
        var resumed = false
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let phase = Mutex(Phase.pending)
    private let waiter = Mutex(Waiter())

    /// The connection opened: true when it may be used (the attempt was not abandoned first).
    func open() -> Bool {
        phase.withLock { phase in
            guard phase == .pending else { return false }
            phase = .opened
            return true
        }
    }

    /// Whether the attempt was given up before it opened.
    var abandoned: Bool { phase.withLock { $0 == .abandoned } }

    /// Waits until `task` (the attempt) ends, or until `timeout` passes with the connection not
    /// open, or until the calling task is cancelled; in the last two cases the attempt is
    /// abandoned (and `task` cancelled), and left behind if it does not end.
    func wait(for task: Task<Void, Never>, timeout: Duration) async {
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled, abandonIfPending() {
                task.cancel()
                finish()
            }
        }
        let watcher = Task {
            await task.value
            finish()
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = waiter.withLock { waiter in
                    if waiter.resumed { return true }
                    waiter.continuation = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            _ = abandonIfPending()
            task.cancel()
            finish()
        }
        timer.cancel()
        _ = watcher
    }

    private func abandonIfPending() -> Bool {
        phase.withLock { phase in
            guard phase == .pending else { return false }
            phase = .abandoned
            return true
        }
    }

    private func finish() {
        let continuation = waiter.withLock { waiter -> CheckedContinuation<Void, Never>? in
            guard !waiter.resumed else { return nil }
            waiter.resumed = true
            defer { waiter.continuation = nil }
            return waiter.continuation
        }
        continuation?.resume()
    }
}
