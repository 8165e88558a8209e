import Foundation
import Models
import Testing

@testable import StreamBrokerClient

/// Waiting calls end with `CancellationError` when their task is cancelled, and leave nothing
/// behind; here no broker listens, so every call waits for a connection.
@Suite("Client cancellation")
struct CancellationTests {
    @Test func waitingCallsEndWhenCancelled() async throws {
        let client = StreamBrokerClient(
            configuration: .init(url: "ws://127.0.0.1:1/ws", initialBackoff: .milliseconds(20), maxBackoff: .milliseconds(100)))
        let connecting = Task { try await client.connect() }
        let publishing = Task { try await client.publish(topic: "t", payload: json("1")) }
        let subscribing = Task { try await client.subscribe(topic: "t", group: "g") }
        try await waitUntil("all three waiting") {
            client.state.withLock { $0.connectWaiters.count == 1 && $0.publishes.count == 1 && $0.subscriptions.count == 1 }
        }
        connecting.cancel()
        publishing.cancel()
        subscribing.cancel()
        await #expect(throws: CancellationError.self) { try await connecting.value }
        await #expect(throws: CancellationError.self) { try await publishing.value }
        await #expect(throws: CancellationError.self) { try await subscribing.value }
        #expect(client.state.withLock { $0.connectWaiters.isEmpty && $0.publishes.isEmpty && $0.subscriptions.isEmpty })
        await client.close()
        await #expect(throws: StreamBrokerClientError(.closed, "the client is closed")) { try await client.connect() }
    }
}
