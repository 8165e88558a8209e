import Models
import StreamBrokerClient

/// The README's Swift client example, compiled with the tests so that it keeps matching the API
/// (never run: it needs a broker on the default URL).
enum ReadmeExample {
    static func run() async throws {
        let client = StreamBrokerClient()  // BUS_URL, else ws://127.0.0.1:7070/ws; token: StreamBrokerClient(token: "…")
        try await client.connect()

        let stored = try await client.publish(topic: "orders.created", key: "cust-7", headers: ["ct": "json"], payload: Order(n: 1))
        print(stored.partition, stored.offset, stored.duplicate)
        try await client.publish(topic: "orders.created", payload: RawJSON(trusted: Array(#"{"n":2}"#.utf8)))

        let orders = try await client.subscribe(topic: "orders.created", group: "billing", from: .earliest, maxInflight: 16)
        for try await message in orders {
            let order = try message.decode(Order.self)
            if order.n < 0 { message.nack(reason: "negative", delay: .seconds(1)) } else { message.ack() }
        }

        let queue = TaskQueue(client: client, topic: "emails.send")  // group "workers"
        try await queue.enqueue(Order(n: 3))
        try await queue.run(concurrency: 4) { task in
            print(try task.decode(Order.self))
        }
        await client.close()
    }
}
