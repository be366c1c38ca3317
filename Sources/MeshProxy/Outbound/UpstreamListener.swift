import Logging
import MeshCore
import NIOCore
import MeshTransport
import NIOPosix

/// A local port bound to one service (`mesh proxy --upstream db=127.0.0.1:15432`): what an
/// app that cannot send a `Host` header — a database client, any raw TCP — dials to reach
/// that service through the mesh.
///
/// A service declared `appProtocol: tcp` is relayed opaquely at once (no waiting: server-first
/// protocols work). Otherwise the service speaks HTTP and the first bytes decide: HTTP/1.1 or
/// HTTP/2 gets the full HTTP stack (routed to this service whatever the `Host`); anything else
/// — or silence for `detectTimeout` — is refused at once with a log line that says why. An HTTP
/// app never receives raw bytes, which would skip every HTTP check of its proxy.
enum UpstreamListener {
    static func bind(_ binding: Sidecar.Upstream, group: EventLoopGroup, states: LoopStates, limits: ProxyLimits,
                     logger: Logger) async throws -> Channel {
        let service = binding.service
        let router: Router = { head, _, state in OutboundListener.route(head, to: service, state: state) }
        do {
            return try await ServerBootstrap.dataPath(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let state = states.state(on: channel.eventLoop)
                        state.connectionOpened(.outbound, peer: "src", channel)
                        let sync = channel.pipeline.syncOperations
                        if let route = state.routes[service], route.opaque {
                            try relay(channel, route: route, state: state, limits: limits, logger: logger)
                            return
                        }
                        try sync.addHandler(ProtocolDetectHandler(timeout: limits.detectTimeout) { context, detected, _ in
                            let sync = context.pipeline.syncOperations
                            switch detected {
                            case .http1:
                                try OutboundListener.addHTTPStack(sync, router: router, states: states, limits: limits, logger: logger) { _, state in
                                    // Routed to this service whatever the Host: its route decides.
                                    !state.pool.limits.http1OverHTTP2 && state.routes[service]?.admitsExpress != false
                                }
                            case .http2:
                                try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                                try sync.addHandler(IdleCloseHandler())
                                try HTTP2Stack.configureServer(sync, role: "outbound", caller: .localApp, router: router, states: states, logger: logger)
                            case .opaque:
                                if let route = state.routes[service], route.opaque {
                                    try relay(context.channel, route: route, state: state, limits: limits, logger: logger)
                                    return
                                }
                                logger.warning("connection refused: not HTTP, and the service speaks HTTP", metadata: [
                                    "service": "\(service)",
                                    "hint": "for a raw TCP service, start its proxies with --app-protocol tcp"])
                                context.close(promise: nil)
                            }
                        })
                    }
                }
                .bind(host: binding.listen.host, port: binding.listen.port)
                .get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on upstream \(binding.service)=\(binding.listen): \(error)")
        }
    }

    private static func relay(_ channel: Channel, route: ServiceRoute, state: LoopState, limits: ProxyLimits,
                              logger: Logger) throws {
        let edge = state.edge(LoopState.EdgeKey(direction: .outbound, peer: route.service, tls: true))
        let relay = TCPRelay(onBytes: { [weak edge] count in edge?.opaque?.toDestination.increment(by: Int64(count)) })
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(IdleStateHandler(allTimeout: LoopState.idleTimeout(route.policy, limits)))
        try sync.addHandler(IdleCloseHandler())
        try sync.addHandler(relay)
        OpaqueStream.relayToService(channel, relay: relay, route: route, state: state, limits: limits, logger: logger)
    }
}
