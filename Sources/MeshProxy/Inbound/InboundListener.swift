import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

/// The inbound stack, whole: mTLS (TLS 1.3, client SVID required, mesh bundle only, SPIFFE
/// checks) → HTTP/1.1 → stamp the verified caller identity → forward to the local app on a
/// pooled keep-alive connection.
enum InboundListener {
    static func bind(_ address: HostPort, app: HostPort, group: EventLoopGroup, states: LoopStates,
                     limits: ProxyLimits, logger: Logger) async throws -> Channel {
        let router: Router = { head, info, _ in
            guard let peer = info.peerHeaderValue else {
                // Unreachable with a working TLS layer; refuse rather than forward anonymously.
                return .respond(.forbidden, code: "no-peer-identity", message: "the caller has no verified identity")
            }
            var head = head
            ProxyHeaders.stripHopByHop(&head.headers)
            // Whatever the caller claimed, the app hears only what TLS proved.
            if head.headers.contains(name: ProxyHeaders.peerIdentity) { head.headers.remove(name: ProxyHeaders.peerIdentity) }
            head.headers.add(name: ProxyHeaders.peerIdentity, value: peer)
            return .forward(candidates: [UpstreamKey(address: app, peerIdentity: nil)], head: head)
        }
        do {
            return try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let state = states.state(on: channel.eventLoop)
                        guard let tls = state.serverTLS, let bundle = state.bundle else {
                            throw MeshError(.unavailable, "no SVID yet")
                        }
                        let verifier = SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth)
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(NIOSSLServerHandler(
                            context: tls, customVerificationCallbackWithMetadata: SPIFFEVerification.callback(verifier, logger: logger)))
                        // After the TLS handler: it must see the handshake-completed event.
                        try sync.addHandler(HandshakeTimeoutHandler(timeout: limits.tlsHandshakeTimeout))
                        try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                        try sync.addHandler(IdleCloseHandler())
                        try sync.addHandler(RequestHeaderTimer(limit: limits.requestHeaderTimeout))
                        try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                        try sync.addHandler(HTTPParseErrorResponder())
                        try sync.addHandler(ProxyHTTPHandler(role: "inbound", router: router, states: states, logger: logger))
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on inbound \(address): \(error)")
        }
    }
}
