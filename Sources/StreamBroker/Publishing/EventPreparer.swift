import Models
import Synchronization

/// Turns a validated ``PublishRequest`` into what a store appends, the same way for every way
/// in: the partition (SPEC §5: the key's hash, else round robin per topic) and the event id (the
/// publisher's, else a new UUIDv7), after the store confirmed it can hold the payload. The store
/// stamps `ts` and the offset when it appends.
final class EventPreparer: Sendable {
    private let store: any EventStore
    private let roundRobin = Mutex<[String: Int]>([:])

    init(store: any EventStore) {
        self.store = store
    }

    /// - Throws: `bad_request` (with the request's `rid`) for a payload the store cannot hold.
    func prepare(_ request: PublishRequest, partitions: Int) throws(RequestError) -> AppendRequest {
        do {
            try store.validatePayload(request.payload)
        } catch {
            throw RequestError(error.code, error.message, rid: request.rid)
        }
        let partition: Int
        if partitions == 1 {
            partition = 0
        } else if let key = request.key {
            partition = Partitioner.partition(forKey: key, partitions: partitions)
        } else {
            partition = roundRobin.withLock { counters in
                let next = counters[request.topic, default: 0]
                counters[request.topic] = next &+ 1
                return next % partitions
            }
        }
        return AppendRequest(
            topic: request.topic, partition: partition, id: request.id ?? UUIDv7.make(), key: request.key,
            headers: request.headers, payload: request.payload, idFromClient: request.id != nil)
    }
}
