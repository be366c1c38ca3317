import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import MeshTransport

/// The outbound stack, whole: plain HTTP/1.1 from the local app (loopback) → resolve the
/// `Host` as a service in the pushed registry → round robin over its endpoints → pooled mTLS
/// connection to the peer's inbound listener, which must prove that service's SPIFFE ID.
enum OutboundListener {
    static func bind(_ address: HostPort, trustDomain: String, group: EventLoopGroup, states: LoopStates,
                     limits: ProxyLimits, logger: Logger) async throws -> Channel {
        let router: Router = { head, _, state in route(head, trustDomain: trustDomain, state: state) }
        do {
            return try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                        try sync.addHandler(IdleCloseHandler())
                        try sync.addHandler(RequestHeaderTimer(limit: limits.requestHeaderTimeout))
                        try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                        try sync.addHandler(HTTPParseErrorResponder())
                        try sync.addHandler(ProxyHTTPHandler(role: "outbound", router: router, states: states, logger: logger))
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on outbound \(address): \(error)")
        }
    }

    static func route(_ head: HTTPRequestHead, trustDomain: String, state: LoopState) -> RouteDecision {
        guard let host = head.headers.first(name: "host"), !host.isEmpty else {
            return .respond(.badRequest, code: "no-host", message: "the request has no Host header; send Host: <service>")
        }
        let name = serviceName(fromHost: host)
        guard let service = try? ServiceName(name) else {
            return .respond(.serviceUnavailable, code: "unknown-service",
                            message: "'\(name)' is not a valid mesh service name")
        }
        let endpoints = state.registry.endpoints(of: service)
        guard !endpoints.isEmpty else {
            let known = state.registry.services.contains(service)
            return .respond(.serviceUnavailable, code: known ? "no-endpoints" : "unknown-service",
                            message: known ? "service '\(service)' has no endpoints: no healthy instance is registered right now"
                                : "unknown service '\(service)': no such service is registered in the mesh")
        }
        guard let identity = try? SPIFFEID(trustDomain: trustDomain, service: service) else {
            return .respond(.serviceUnavailable, code: "unknown-service", message: "no identity for '\(service)'")
        }
        let start = state.nextEndpoint[service, default: 0] % endpoints.count
        state.nextEndpoint[service] = start + 1
        let ordered = endpoints[start...] + endpoints[..<start]
        let candidates = ordered.prefix(3).map { UpstreamKey(address: $0.endpoint, peerIdentity: identity) }
        var head = head
        ProxyHeaders.stripHopByHop(&head.headers)
        head.headers.remove(name: ProxyHeaders.peerIdentity)
        return .forward(candidates: Array(candidates), head: head)
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
