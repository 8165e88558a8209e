import Models

/// What leaves the dispatcher: MESSAGE frames to the members' connections, and `/stats`.
extension DispatcherLoop {
    func send(_ deliveries: [GroupState.Delivery]) {
        guard !deliveries.isEmpty else { return }
        for delivery in deliveries {
            guard let connection = connections[delivery.member] else { continue }
            let event = delivery.event
            let frame = MessageFrame(
                messageTemplate, partition: event.partition, offset: event.offset, attempt: delivery.attempt, envelope: event.envelopeJSON)
            connection.send(.message(frame))
        }
        instruments.recordDelivered(deliveries.count)
        // Once per batch: its first event, the oldest (a redelivery would measure its backoff).
        let first = deliveries[0]
        if first.attempt == 1 {
            instruments.publishToDelivery.recordNanoseconds(max(0, MonotonicTime.wallNanoseconds() - first.event.ts &* 1_000_000))
        }
    }

    // MARK: Stats

    func snapshot() -> [GroupDispatcher.PartitionStats] {
        let now = self.now
        let maxInflight = state.members.values.reduce(0) { $0 + $1.maxInflight }
        return state.partitions.map { partition in
            GroupDispatcher.PartitionStats(
                partition: partition.index,
                committed: partition.committed,
                highWatermark: partition.highWatermark,
                inflight: partition.inflight.count,
                maxInflight: maxInflight,
                oldestUnackedMs: partition.inflight.values.map(\.deliveredAt).min().map { now - $0 },
                redeliveries: partition.redeliveries,
                deadLetters: partition.deadLetters,
                connections: state.members.count,
                epoch: partition.epoch,
                owned: partition.owned)
        }
    }
}
