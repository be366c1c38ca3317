import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import MeshTransport

/// The outbound stack, whole: plain HTTP/1.1 from the local app (loopback) → resolve the
/// `Host` as a service in the pushed registry → an endpoint chosen by the service's balancer
/// (`Balance/ServiceRoute.swift`) → pooled mTLS
/// connection to the peer's inbound listener, which must prove that service's SPIFFE ID.
enum OutboundListener {
    static func bind(_ address: HostPort, group: EventLoopGroup, states: LoopStates,
                     limits: ProxyLimits, logger: Logger) async throws -> Channel {
        let router: Router = { head, _, state in route(head, state: state) }
        do {
            return try await ServerBootstrap.dataPath(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        states.state(on: channel.eventLoop).connectionOpened(.outbound, peer: "src", channel)
                        let sync = channel.pipeline.syncOperations
                        // HTTP/1.1, or HTTP/2 with prior knowledge (gRPC clients): told by the
                        // first bytes; anything else meets the HTTP/1.1 parser and its 400.
                        try sync.addHandler(ProtocolDetectHandler(timeout: limits.requestHeaderTimeout) { context, detected, _ in
                            let sync = context.pipeline.syncOperations
                            if detected == .http2 {
                                try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                                try sync.addHandler(IdleCloseHandler())
                                try HTTP2Stack.configureServer(sync, role: "outbound", caller: .localApp, router: router, states: states, logger: logger)
                            } else {
                                try addHTTPStack(sync, router: router, states: states, limits: limits, logger: logger)
                            }
                        })
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on outbound \(address): \(error)")
        }
    }

    static func route(_ head: consuming HTTPRequestHead, state: LoopState) -> RouteDecision {
        guard let host = head.headers.first(name: "host"), !host.isEmpty else {
            return .respond(.badRequest, code: "no-host", message: "the request has no Host header; send Host: <service>")
        }
        guard let (service, route) = state.resolve(host: host) else {
            return .respond(.serviceUnavailable, code: "unknown-service",
                            message: "'\(serviceName(fromHost: host))' is not a valid mesh service name")
        }
        return Self.route(consume head, to: service, route: route, state: state)
    }

    /// Routes a request to `service` (named by its Host, or by the upstream listener it came
    /// to): endpoint choice, fault injection, circuit breaking, routes and splits.
    static func route(_ head: consuming HTTPRequestHead, to service: ServiceName, state: LoopState) -> RouteDecision {
        route(consume head, to: service, route: state.routes[service], state: state)
    }

    /// ``route(_:to:state:)`` with the service's route already looked up (nil: it has none).
    private static func route(_ head: consuming HTTPRequestHead, to service: ServiceName, route: ServiceRoute?, state: LoopState) -> RouteDecision {
        guard let route, !route.keys.isEmpty else {
            let known = state.registry.services.contains(service)
            return .respond(.serviceUnavailable, code: known ? "no-endpoints" : "unknown-service",
                            message: known ? "service '\(service)' has no endpoints: no healthy instance is registered right now"
                                : "unknown service '\(service)': no such service is registered in the mesh")
        }
        if route.policy.faultAbortPercent > 0, state.random.chance(route.policy.faultAbortPercent / 100) {
            return .respond(HTTPResponseStatus(statusCode: route.policy.faultAbortStatus), code: "fault-injected",
                            message: "aborted by fault injection (fault.abort of \(service)'s TrafficPolicy)")
        }
        if let reason = route.overloaded() {
            return .respond(.serviceUnavailable, code: "overloaded", message: reason)
        }
        let (subset, matched) = route.subset(for: head, random: &state.random)
        let candidates = route.pick(now: Exchange.now(), random: &state.random, subset: subset)
        if candidates.isEmpty {
            let wanted = subset.map { " with labels " + $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") } ?? ""
            return .respond(.serviceUnavailable, code: "no-endpoints",
                            message: "no instance of '\(service)'\(wanted) can take the request now (routes, split or circuit breaker of its TrafficPolicy)")
        }
        ProxyHeaders.stripHopByHop(&head.headers)
        ProxyHeaders.removePeerIdentity(&head.headers)
        return .forward(candidates: candidates, head: head, subset: subset, route: matched)
    }

    /// The HTTP/1.1 stack of a connection from the local app: the express path, which hands
    /// the connection to the full stack (``addFullHTTPStack``) at the first request it does
    /// not carry itself.
    /// - Parameter admits: whether a request may stay on the express path (by default: its
    ///   Host's route, ``admitsExpress(_:state:)``).
    static func addHTTPStack(_ sync: ChannelPipeline.SynchronousOperations, router: @escaping Router, states: LoopStates,
                             limits: ProxyLimits, logger: Logger,
                             admits: @escaping @Sendable (HTTPRequestHead, LoopState) -> Bool = { admitsExpress($0, state: $1) }) throws {
        // Run by the express handler, which puts it in the pipeline for the full stack.
        let headerTimer = RequestHeaderTimer(limit: limits.requestHeaderTimeout)
        try sync.addHandler(ExpressHandler(
            role: "outbound", router: router, admits: admits,
            fullStack: { sync in
                try addFullHTTPStack(sync, router: router, states: states, limits: limits, headerTimer: headerTimer, logger: logger)
            },
            states: states, idleTimeout: limits.idleTimeout, headerTimer: headerTimer, logger: logger))
    }

    /// NIO's HTTP/1.1 codec and the proxy handler, behind a request-header timer already in
    /// the pipeline (the express handler puts it there as it hands the connection on).
    static func addFullHTTPStack(_ sync: ChannelPipeline.SynchronousOperations, router: @escaping Router, states: LoopStates,
                                 limits: ProxyLimits, headerTimer: RequestHeaderTimer, logger: Logger) throws {
        // Pipelining, the idle timeout and parse errors are the proxy handler's (see
        // `DownstreamFlow`): fewer handlers on every read and write. No outbound header
        // validator either: every header the proxy writes was read by a strict parser (llhttp
        // or HPACK, which refuse CR, LF and NUL in names and values) or is one the proxy
        // formats itself (HostileHTTPTests sends folded and CR-laden headers).
        try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false,
                                             withOutboundHeaderValidation: false)
        try sync.addHandler(ProxyHTTPHandler(role: "outbound", router: router, states: states,
                                             idleTimeout: limits.idleTimeout, headerTimer: headerTimer, logger: logger))
    }

    /// Whether a request from the local app may stay on the express path: not when requests
    /// to peers ride HTTP/2, nor when the destination's TrafficPolicy needs the full stack.
    /// A Host that names no route is answered by the router, on the express path too.
    static func admitsExpress(_ head: HTTPRequestHead, state: LoopState) -> Bool {
        if state.pool.limits.http1OverHTTP2 { return false }
        guard let host = head.headers.first(name: "host"), let route = state.resolve(host: host)?.route else { return true }
        return route.admitsExpress
    }

    /// `api`, `api:8080`, `API.` → `api`.
    static func serviceName(fromHost host: String) -> String {
        var name = host.lowercased()
        if name.hasPrefix("[") { return name }
        if let colon = name.lastIndex(of: ":") { name = String(name[..<colon]) }
        if name.hasSuffix(".") { name.removeLast() }
        return name
    }
}
