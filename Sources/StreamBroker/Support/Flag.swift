import Synchronization

/// A boolean that goes from false to true once, shareable by closures (an `Atomic` cannot be
/// captured).
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)

    /// Sets the flag; returns whether it was set already.
    func set() -> Bool { value.exchange(true, ordering: .relaxed) }
}
