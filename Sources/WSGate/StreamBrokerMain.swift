import BrokerAuth
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import StreamBroker

@main
struct StreamBrokerMain {
    static func main() async {
        let config: GatewayConfig
        do {
            config = try GatewayConfig.fromEnvironment()
        } catch {
            FileHandle.standardError.write(Data("stream-broker: configuration error: \(error)\n".utf8))
            exit(2)
        }
        let logLevel = config.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(BrokerMetricsFactory(registry: registry))
        let logger = Logger(label: "broker")

        let store: any EventStore
        var mongo: MongoStore?
        if let url = config.mongoURL {
            do {
                mongo = try MongoStore(
                    options: .init(uri: url, database: config.mongoDB, poolSize: config.mongoPoolSize, threads: config.mongoThreads),
                    logger: Logger(label: "broker.store.mongo"))
                store = mongo!
            } catch {
                FileHandle.standardError.write(Data("stream-broker: configuration error: \(error)\n".utf8))
                exit(2)
            }
        } else {
            let location: SQLiteStore.Location = config.dataDir == ":memory:" ? .memory : .file(directory: config.dataDir)
            store = SQLiteStore(location: location, durability: config.durability, logger: Logger(label: "broker.store"))
        }
        let broker = Broker(store: store, settings: config.broker, logger: Logger(label: "broker.dispatch"))
        if mongo == nil {
            // A local store opens at once: open it before listening, so that no request meets a
            // store that is not open yet. (MongoDB opens in the broker's `run`, because a server
            // that is away must not keep `/healthz` from answering.)
            do {
                try await broker.openStore()
            } catch {
                logger.critical("cannot open the store", metadata: [LogKey.error: "\(error)"])
                exit(1)
            }
        }
        let authenticator: Authenticator?
        do {
            authenticator = try await Authenticator.make(config.auth)
        } catch {
            FileHandle.standardError.write(Data("stream-broker: configuration error: \(error)\n".utf8))
            exit(2)
        }
        let app = buildApplication(
            config: config, broker: broker, registry: registry, logger: Logger(label: "broker.gateway"), authenticator: authenticator)
        // Dependency order: store and engine, outbox drains, then the gateway (stopped first).
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: broker)]
        if let mongo {
            for outbox in config.outbox {
                services.append(.init(service: OutboxDrain(outbox: outbox, broker: broker, store: mongo, logger: Logger(label: "broker.outbox"))))
            }
        }
        services.append(.init(service: app))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            logger.error("stream-broker stopped with an error", metadata: [LogKey.error: "\(error)"])
            exit(1)
        }
    }
}
