import Synchronization

/// An integer shared by tasks (an `Atomic` cannot be captured by a sending closure).
final class Counter: Sendable {
    private let atomic: Atomic<Int>

    init(_ value: Int = 0) { atomic = Atomic(value) }

    /// Adds one and returns the new value.
    func increment() -> Int { atomic.add(1, ordering: .relaxed).newValue }

    var value: Int {
        get { atomic.load(ordering: .relaxed) }
    }

    func store(_ value: Int) { atomic.store(value, ordering: .relaxed) }
}

/// A value shared by tasks behind a lock (a `Mutex` cannot be captured by a sending closure).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    func withLock<T: Sendable>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
}
