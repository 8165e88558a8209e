import BrokerAuth
import Hummingbird
import HummingbirdCore
import Logging
import Prometheus
import ServiceLifecycle
import StreamBroker

/// Builds the gateway: HTTP API and `/ws` on one port, in front of a ``Broker``.
/// - Parameter services: run with the application, before it (in-process tests pass the
///   broker here; the executable runs its services in its own group).
/// - Parameter authenticator: checks credentials (nil: `BUS_AUTH=none`).
func buildApplication(
    config: GatewayConfig, broker: Broker, registry: PrometheusCollectorRegistry, logger: Logger, authenticator: Authenticator? = nil,
    services: [any Service] = []
) -> some ApplicationProtocol {
    let gate = authenticator.map(AuthGate.init(authenticator:))
    let router = Router(context: GatewayRequestContext.self)
    addHTTPRoutes(to: router, config: config, broker: broker, gate: gate, registry: registry)
    addStaticRoutes(to: router)
    // WebSocket upgrades on `/ws` (SPEC §8), and on `/`, where the sketch's client
    // (`new WebSocket('ws://host:7070')`) connects; Hummingbird routes the rest.
    let endpoint = WebSocketEndpoint(paths: ["/ws", "/"], config: config, broker: broker, gate: gate, logger: logger)
    var app = Application(
        router: router,
        server: HTTPServerBuilder { responder in GatewayChannel(responder: responder, webSocket: endpoint, tls: config.tls?.context, logger: logger)
        },
        configuration: .init(address: .hostname(config.host, port: config.port), serverName: "stream-broker"),
        logger: logger
    )
    app.addServices(services)
    if let gate, gate.settings.mode == .token, let path = gate.settings.tokensFile {
        app.addServices(TokensFileWatcher(gate: gate, path: path, logger: logger))
    }
    return app
}
