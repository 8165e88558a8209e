import Models

/// How a batch of append requests becomes events, the same for every store: which requests
/// repeat an event already stored or an earlier request of the batch (idempotent publish, SPEC
/// §3), how many offsets each partition reserves, and which offset each new event gets.
///
/// A store looks up ``idsToLookUp(_:)``, builds the plan from what it found, reserves
/// ``reservations``, inserts ``events(firstOffsets:ts:)`` and answers with
/// ``results(inserted:lostRaces:)``.
struct AppendPlan {
    private struct TopicID: Hashable {
        let topic: String
        let id: String
    }

    private let requests: [AppendRequest]
    /// Answers known before the insert: repeats of a stored event.
    private var known: [AppendResult?]
    /// The first request of the batch with each `(topic, id)`.
    private var firstInBatch: [TopicID: Int] = [:]
    /// The requests to store (indexes into the batch), in submission order.
    private(set) var fresh: [Int] = []
    /// Offsets each partition reserves, in the order the partitions first appear.
    private(set) var reservations: [(counter: StoreKey, count: Int64)] = []

    /// The publisher-chosen ids of a batch, by topic: the ones that may repeat a stored event.
    static func idsToLookUp(_ requests: [AppendRequest]) -> [(topic: String, ids: [String])] {
        var order: [String] = []
        var byTopic: [String: [String]] = [:]
        for request in requests where request.idFromClient {
            if byTopic[request.topic] == nil { order.append(request.topic) }
            byTopic[request.topic, default: []].append(request.id)
        }
        return order.map { ($0, byTopic[$0]!) }
    }

    /// - Parameter stored: the events the store holds with any of ``idsToLookUp(_:)``.
    init(_ requests: [AppendRequest], stored: [Event]) {
        self.requests = requests
        known = Array(repeating: nil, count: requests.count)
        var existing: [TopicID: Event] = [:]
        for event in stored { existing[TopicID(topic: event.topic, id: event.id)] = event }
        var counts: [StoreKey: Int64] = [:]
        var order: [StoreKey] = []
        for (index, request) in requests.enumerated() {
            let key = TopicID(topic: request.topic, id: request.id)
            if request.idFromClient, let event = existing[key] {
                known[index] = AppendResult(event: event, duplicate: true)
            } else if request.idFromClient, firstInBatch[key] != nil {
                continue  // answered with the first one's event
            } else {
                firstInBatch[key] = index
                fresh.append(index)
                let counter = StoreKey.counter(topic: request.topic, partition: request.partition)
                if counts[counter] == nil { order.append(counter) }
                counts[counter, default: 0] += 1
            }
        }
        reservations = order.map { ($0, counts[$0]!) }
    }

    /// The request a fresh event comes from.
    func request(fresh position: Int) -> AppendRequest { requests[fresh[position]] }

    /// The events to insert, one per ``fresh`` request, numbered from each partition's first
    /// reserved offset in submission order.
    func events(firstOffsets: [StoreKey: Int64], ts: Int64) -> [Event] {
        var next = firstOffsets
        return fresh.map { index in
            let request = requests[index]
            let counter = StoreKey.counter(topic: request.topic, partition: request.partition)
            let offset = next[counter] ?? 1
            next[counter] = offset + 1
            return Event(
                topic: request.topic, partition: request.partition, offset: offset, id: request.id, ts: ts,
                key: request.key, headers: request.headers, payload: request.payload)
        }
    }

    /// The answer to every request, in submission order.
    ///
    /// - Parameters:
    ///   - inserted: ``events(firstOffsets:ts:)`` as inserted.
    ///   - lostRaces: by position in ``fresh``: the event another writer stored first with the same
    ///     id (the offset reserved here stays a hole, which dispatchers skip after a timeout).
    func results(inserted: [Event], lostRaces: [Int: Event] = [:]) throws -> [AppendResult] {
        var results = known
        for (position, index) in fresh.enumerated() {
            if let winner = lostRaces[position] {
                results[index] = AppendResult(event: winner, duplicate: true)
            } else {
                results[index] = AppendResult(event: inserted[position], duplicate: false)
            }
        }
        return try requests.indices.map { index in
            if let result = results[index] { return result }
            let request = requests[index]
            guard let first = firstInBatch[TopicID(topic: request.topic, id: request.id)], let stored = results[first] else {
                throw BrokerError(.internal, "unresolved duplicate in batch")
            }
            return AppendResult(event: stored.event, duplicate: true)
        }
    }
}
