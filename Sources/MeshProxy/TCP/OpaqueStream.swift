import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// Opaque TCP streams: raw TCP carried byte for byte, over mTLS between the proxies.
///
/// Outbound (``relayToService``): an upstream listener's connection that is declared or
/// detected opaque goes to an endpoint chosen by the service's balancer, over an mTLS
/// connection that names ``MeshTLS/ALPN/opaque`` in its handshake; a failed connect tries the
/// next endpoint. Inbound (``relayToApp``): a connection that named it is authorized at L4
/// (the caller's identity, the port) and relayed to the app.
enum OpaqueStream {
    /// Relays `downstream` (the local app's connection, with `relay` already in its pipeline)
    /// to an instance of `route`'s service. Call on the downstream's event loop.
    static func relayToService(_ downstream: Channel, relay: TCPRelay, route: ServiceRoute, state: LoopState,
                               limits: ProxyLimits, logger: Logger) {
        // Hold the caller's bytes while connecting (what was read already waits in `relay`).
        downstream.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        let edge = state.edge(LoopState.EdgeKey(direction: .outbound, peer: route.service, tls: true))
        let candidates = route.pick(now: Exchange.now(), random: &state.random)
        guard let tls = state.clientOpaqueTLS, let bundle = state.bundle, !candidates.isEmpty else {
            edge.opaque?.connectFailed.increment()
            logger.warning("opaque TCP stream refused: no endpoint of the service can take it",
                           metadata: ["service": "\(route.service)"])
            downstream.close(promise: nil)
            return
        }
        func attempt(_ index: Int) {
            let key = candidates[index]
            let stats = route.stats(for: key)
            let started = Exchange.now()
            let upstreamRelay = TCPRelay(onBytes: { [weak edge] count in edge?.opaque?.fromDestination.increment(by: Int64(count)) })
            connect(key, tls: tls, bundle: bundle, relay: upstreamRelay, on: downstream.eventLoop, limits: limits)
                .assumeIsolated().whenComplete { result in
                    switch result {
                    case .success(let upstream):
                        if let stats {
                            route.finished(stats, failed: false, latencyNanos: Exchange.now() - started, now: Exchange.now(), logger: logger)
                            // Open streams weigh on the endpoint like requests in flight.
                            stats.inFlight += 1
                            upstream.closeFuture.assumeIsolated().whenComplete { _ in stats.inFlight -= 1 }
                        }
                        edge.opaque?.opened.increment()
                        if let open = edge.opaque?.open {
                            open.increment()
                            upstream.closeFuture.whenComplete { _ in open.decrement() }
                        }
                        state.connectionOpened(.outbound, peer: "dst", upstream)
                        TCPRelay.join(relay, upstreamRelay)
                        downstream.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
                    case .failure(let error):
                        if let stats {
                            route.finished(stats, failed: true, latencyNanos: nil, now: Exchange.now(), logger: logger)
                        }
                        if index + 1 < candidates.count, downstream.isActive {
                            attempt(index + 1)
                            return
                        }
                        edge.opaque?.connectFailed.increment()
                        logger.warning("opaque TCP stream failed: cannot connect to the service's proxies",
                                       metadata: ["service": "\(route.service)", "error": "\(error)"])
                        downstream.close(promise: nil)
                    }
                }
        }
        attempt(0)
    }

    /// An mTLS connection to a peer proxy for an opaque stream: the peer must prove
    /// `key.peerIdentity` and accept ``MeshTLS/ALPN/opaque``.
    private static func connect(_ key: UpstreamKey, tls: NIOSSLContext, bundle: TrustBundle, relay: TCPRelay,
                                on eventLoop: EventLoop, limits: ProxyLimits) -> EventLoopFuture<Channel> {
        guard let expected = key.peerIdentity else {
            return eventLoop.makeFailedFuture(MeshError(.unavailable, "an opaque stream needs a mesh peer"))
        }
        let verifier = SPIFFEPeerVerifier(bundle: bundle, expected: [expected], usage: .serverAuth)
        let ready = eventLoop.makePromise(of: Void.self)
        // The initializer runs on `eventLoop` (the channel is made on it), where the relay lives.
        let relay = NIOLoopBound(relay, eventLoop: eventLoop)
        return ClientBootstrap.dataPath(on: eventLoop, limits: limits)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addPeerTLS(tls, verifier: verifier)
                    try sync.addHandler(HandshakeWaiter(ready: ready, timeout: limits.tlsHandshakeTimeout, protocol: MeshTLS.ALPN.opaque))
                    try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                    try sync.addHandler(IdleCloseHandler())
                    try sync.addHandler(relay.value)
                }
            }
            .connect(host: key.address.host, port: key.address.port)
            // A failed connect closes the channel, whose handler then fails `ready`.
            .flatMap { channel in
                ready.futureResult.map { channel }.flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            }
    }

    /// Relays an authorized inbound stream (`relay` in its pipeline) to the app's port. Call on
    /// the stream's event loop.
    static func relayToApp(_ downstream: Channel, relay: TCPRelay, app: HostPort, edge: EdgeHandles,
                           limits: ProxyLimits, logger: Logger) {
        downstream.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        let appRelay = TCPRelay(onBytes: { [weak edge] count in edge?.opaque?.fromDestination.increment(by: Int64(count)) })
        let boundRelay = NIOLoopBound(appRelay, eventLoop: downstream.eventLoop)
        ClientBootstrap.dataPath(on: downstream.eventLoop, limits: limits)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(boundRelay.value) }
            }
            .connect(host: app.host, port: app.port)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let appChannel):
                    edge.opaque?.opened.increment()
                    if let open = edge.opaque?.open {
                        open.increment()
                        appChannel.closeFuture.whenComplete { _ in open.decrement() }
                    }
                    TCPRelay.join(relay, appRelay)
                    downstream.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
                case .failure(let error):
                    edge.opaque?.connectFailed.increment()
                    logger.warning("opaque TCP stream failed: the app does not accept connections",
                                   metadata: ["app": "\(app)", "error": "\(error)"])
                    downstream.close(promise: nil)
                }
            }
    }
}

/// Settles `ready` when the TLS handshake of an upstream connection (an opaque stream, an
/// HTTP/2 connection) completes, fails or times out; then steps aside.
final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var ready: EventLoopPromise<Void>?
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    /// The ALPN protocol the peer must have chosen: a peer that does not speak it (an older
    /// proxy, a peer whose app speaks something else) is a failed connect, not a stream that
    /// carries bytes it will misread.
    private let expectedProtocol: String

    init(ready: EventLoopPromise<Void>, timeout: TimeAmount, protocol: String) {
        self.ready = ready
        self.timeout = timeout
        self.expectedProtocol = `protocol`
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            handler.value.settle(.failure(MeshError(.unavailable, "TLS handshake with the peer timed out")))
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            if negotiated == expectedProtocol {
                settle(.success(()))
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            } else {
                settle(.failure(MeshError(.unavailable, "the peer does not speak \(expectedProtocol) (it chose \(negotiated ?? "nothing"))")))
                context.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        settle(.failure(error))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        settle(.failure(MeshError(.unavailable, "the peer closed the connection during the TLS handshake")))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        settle(.failure(MeshError(.unavailable, "the connection closed before it was ready")))
    }

    private func settle(_ result: Result<Void, Error>) {
        timer?.cancel()
        timer = nil
        guard let ready else { return }
        self.ready = nil
        ready.completeWith(result)
    }
}

/// An inbound opaque stream as authorization sees it: its channel, what is known of its
/// caller, and the check that says whether it may stay open.
final class OpenStream {
    let channel: Channel
    var info: DownstreamInfo
    let appPort: Int
    let stillAllowed: (OpenStream) -> Bool

    init(channel: Channel, info: DownstreamInfo, appPort: Int, stillAllowed: @escaping (OpenStream) -> Bool) {
        self.channel = channel
        self.info = info
        self.appPort = appPort
        self.stillAllowed = stillAllowed
    }
}
