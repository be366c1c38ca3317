import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL

// The client side of HTTP/2 (see ``HTTP2Stack`` for the whole): the pool's connections to
// an upstream, what watches them, and a stream per exchange.

/// One HTTP/2 connection to an upstream, with its stream multiplexer.
final class HTTP2Connection {
    let channel: Channel
    let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    let watcher: HTTP2GoAwayWatcher
    /// Streams opened on it so far: a stream on a connection that already carried others may
    /// meet a close the peer started before it saw the stream (then the request is replayed
    /// once on a new connection, as for a reused HTTP/1.1 connection).
    var streamsOpened = 0
    /// Streams open right now; a retired connection closes when this reaches 0.
    var streamsActive = 0
    /// No new streams: the peer sent GOAWAY, the connection used up its stream budget, or too
    /// many of its streams were reset.
    var retired = false
    /// Streams that ended without a complete response (cancelled by the caller, timed out,
    /// reset by the peer).
    var resets = 0
    /// The kernel's retransmission total at the last TCP_INFO sample.
    var reportedRetransmits: UInt32 = 0
    /// When the last stream ended, while no stream is open (nil while one is).
    var idleSince: NIODeadline?
    /// An idle check is scheduled (at most one at a time).
    var idleCheckScheduled = false

    /// Stream IDs are 31 bits and odd for a client: a long-lived connection is replaced well
    /// before it runs out of them.
    static let maxStreams = 1 << 29
    /// Streams open at once on one connection; beyond, another connection to the same
    /// endpoint is used. 100 is what RFC 9113 recommends as the least a server allows (and
    /// swift-nio-http2's default): staying within it means no stream ever waits in the HTTP/2
    /// layer's own queue, where a stream cancelled while queued was seen to stay counted and
    /// wedge the connection.
    static let maxConcurrentStreams = 100

    /// How long an extra connection (one opened because the others were full) stays open with
    /// no stream: load that needs several connections comes and goes by the millisecond, and
    /// closing one the moment its last stream ended meant a new connection (and, to a peer
    /// proxy, a TLS handshake) for the next burst, dozens of times a second under gRPC load.
    static let extraIdleGrace = TimeAmount.seconds(10)

    /// After this many resets the connection is replaced. Peers count resets (a flood of them
    /// is an attack they cut off), and a stream cancelled at the wrong moment was seen to stay
    /// counted as open by swift-nio-http2 for good: a fresh connection bounds both.
    static let maxResets = 32

    /// Room for one more stream: within our cap and within what the peer takes at once (an
    /// app may allow fewer than 100).
    var hasRoom: Bool {
        !retired && streamsActive < min(Self.maxConcurrentStreams, watcher.peerMaxStreams ?? Self.maxConcurrentStreams)
            && channel.isActive
    }

    init(channel: Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer, watcher: HTTP2GoAwayWatcher) {
        self.channel = channel
        self.multiplexer = multiplexer
        self.watcher = watcher
    }
}

/// Watches the connection-level frames of an HTTP/2 client connection: a GOAWAY from the peer
/// (it is shutting down) retires the connection, so that new requests open a new one while
/// the streams already running finish; the peer's SETTINGS say how many streams it takes at
/// once. In the pipeline from the start, so that the first SETTINGS is not missed. When
/// swift-nio-http2 gives the connection up itself (``HTTP2Stack/endsConnection(_:)``), the
/// connection is retired and closed: its streams end (and are replayed or answered 502 as
/// for any closed connection) instead of waiting for answers that will not come.
final class HTTP2GoAwayWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    var onGoAway: (() -> Void)?
    /// SETTINGS_MAX_CONCURRENT_STREAMS of the peer, once it said so.
    private(set) var peerMaxStreams: Int?
    /// Succeeded by the peer's first SETTINGS: streams sent before it could exceed a limit the
    /// peer has not told yet, and be refused.
    private var firstSettings: EventLoopPromise<Void>?

    init(firstSettings: EventLoopPromise<Void>) { self.firstSettings = firstSettings }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data).payload {
        case .goAway:
            onGoAway?()
        case .settings(.settings(let settings)):
            for setting in settings where setting.parameter == .maxConcurrentStreams {
                peerMaxStreams = setting.value
            }
            firstSettings?.succeed(())
            firstSettings = nil
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard HTTP2Stack.endsConnection(error) else {
            context.fireErrorCaught(error)
            return
        }
        onGoAway?()
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        firstSettings?.fail(MeshError(.unavailable, "the HTTP/2 peer closed the connection before its SETTINGS"))
        firstSettings = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        firstSettings?.fail(MeshError(.unavailable, "the HTTP/2 connection closed before the peer's SETTINGS"))
        firstSettings = nil
    }
}

extension UpstreamPool {
    /// A new stream on the (shared) HTTP/2 connection to `key`, with the HTTP/1 client codec
    /// and an ``UpstreamHandler``: an ``UpstreamConnection`` that is used for one exchange and
    /// then closed, never pooled (the connection under it is).
    /// - Parameters:
    ///   - fresh: open a new connection rather than the current one (a replay after the
    ///     current one was closed under a stream).
    ///   - mayMove: a stream the chosen connection refuses is opened on another one, once.
    func acquireStream(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?,
                       fresh: Bool = false, mayMove: Bool = true) -> EventLoopFuture<UpstreamConnection> {
        if fresh { for open in http2Open[key] ?? [] { retire(open, key: key) } }
        return http2Connection(key, clientTLS: clientTLS, bundle: bundle).flatMap { connection in
            // Filled up while it was being made (many requests waited for it): another one.
            guard connection.hasRoom else { return self.acquireStream(key, clientTLS: clientTLS, bundle: bundle) }
            let eventLoop = self.eventLoop
            let limits = self.limits
            let secure = key.peerIdentity != nil
            connection.streamsOpened += 1
            connection.streamsActive += 1
            connection.idleSince = nil
            let reused = connection.streamsOpened
            if connection.streamsOpened >= HTTP2Connection.maxStreams { self.retire(connection, key: key) }
            let stream = connection.multiplexer.createStreamChannel { stream in
                stream.eventLoop.makeCompletedFuture {
                    let sync = stream.pipeline.syncOperations
                    try sync.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: secure ? .https : .http))
                    try sync.addHandler(UpstreamHandler(ready: eventLoop.makePromise(of: Void.self), expectsTLS: false,
                                                        handshakeTimeout: limits.tlsHandshakeTimeout))
                }
            }
            .flatMapThrowing { stream in
                let handler = try stream.pipeline.syncOperations.handler(type: UpstreamHandler.self)
                let upstream = UpstreamConnection(key: key, channel: stream, handler: handler, isStream: true)
                upstream.uses = reused
                stream.closeFuture.whenComplete { _ in
                    if !handler.responseCompleted { connection.resets += 1 }
                    self.streamEnded(on: connection, key: key)
                }
                return upstream
            }
            stream.whenFailure { _ in self.streamEnded(on: connection, key: key) }
            guard mayMove else { return stream }
            // A connection the peer has just given up (its GOAWAY read in this same tick, and
            // the streams it closed already asking for new ones before the watcher saw it)
            // refuses the stream: nothing was sent, so it goes to another connection.
            return stream.flatMapError { _ in
                self.retire(connection, key: key)
                return self.acquireStream(key, clientTLS: clientTLS, bundle: bundle, mayMove: false)
            }
        }
    }

    private func streamEnded(on connection: HTTP2Connection, key: UpstreamKey) {
        connection.streamsActive -= 1
        if connection.resets >= HTTP2Connection.maxResets, !connection.retired { retire(connection, key: key) }
        guard connection.streamsActive == 0 else { return }
        if connection.retired {
            retire(connection, key: key)
        } else if http2Open[key]?.first !== connection {
            // An extra connection opened for a burst goes once it has stayed idle for
            // `extraIdleGrace`; the first one stays.
            connection.idleSince = .now()
            if !connection.idleCheckScheduled { scheduleIdleCheck(connection, key: key, in: HTTP2Connection.extraIdleGrace) }
        }
    }

    private func scheduleIdleCheck(_ connection: HTTP2Connection, key: UpstreamKey, in delay: TimeAmount) {
        connection.idleCheckScheduled = true
        let bound = NIOLoopBound((self, connection), eventLoop: eventLoop)
        eventLoop.scheduleTask(in: delay) {
            let (pool, connection) = bound.value
            connection.idleCheckScheduled = false
            guard !connection.retired, connection.streamsActive == 0, let since = connection.idleSince,
                  pool.http2Open[key]?.first !== connection else { return }
            let left = since + HTTP2Connection.extraIdleGrace - .now()
            if left > .zero {
                pool.scheduleIdleCheck(connection, key: key, in: left)
            } else {
                pool.retire(connection, key: key)
            }
        }
    }

    /// Takes a connection out of use: new streams go to another connection; this one closes
    /// once its last stream has ended.
    func retire(_ connection: HTTP2Connection, key: UpstreamKey) {
        connection.retired = true
        forgetHTTP2(connection, key: key)
        if connection.streamsActive == 0 { connection.channel.close(promise: nil) }
    }

    private func forgetHTTP2(_ connection: HTTP2Connection, key: UpstreamKey) {
        guard var list = http2Open[key] else { return }
        list.removeAll { $0 === connection }
        http2Open[key] = list.isEmpty ? nil : list
    }

    /// The HTTP/2 connection to `key`: the open one, the one being made, or a new one (mTLS with
    /// ALPN `h2` to a peer proxy that must prove `key.peerIdentity`; h2c to the local app).
    private func http2Connection(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?) -> EventLoopFuture<HTTP2Connection> {
        if let open = http2Open[key]?.first(where: \.hasRoom) { return eventLoop.makeSucceededFuture(open) }
        if let pending = http2Pending[key] { return pending }
        var verifier: SPIFFEPeerVerifier?
        if let expected = key.peerIdentity {
            guard clientTLS != nil, let bundle else {
                return eventLoop.makeFailedFuture(MeshError(.unavailable, "this proxy has no SVID yet"))
            }
            verifier = SPIFFEPeerVerifier(bundle: bundle, expected: [expected], usage: .serverAuth)
        }
        let ready = eventLoop.makePromise(of: Void.self)
        // h2c: ready once the peer's SETTINGS arrived; TLS: once the handshake is done too.
        let settings = eventLoop.makePromise(of: Void.self)
        let limits = self.limits
        let onConnection = self.onConnection
        let future = ClientBootstrap.dataPath(on: eventLoop, limits: limits)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    do {
                        if let verifier, let clientTLS {
                            try sync.addPeerTLS(clientTLS, verifier: verifier)
                            try sync.addHandler(HandshakeWaiter(ready: ready, timeout: limits.tlsHandshakeTimeout,
                                                                protocol: MeshTLS.ALPN.http2))
                        }
                        try sync.addHandler(FlushCoalescer())
                        // Pushed streams are refused: the initializer closes them.
                        _ = try sync.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(),
                                                            streamConfiguration: HTTP2Stack.relayedResetsConfiguration) { pushed in
                            pushed.close()
                        }
                        try sync.addHandler(HTTP2GoAwayWatcher(firstSettings: settings))
                        if verifier == nil { ready.succeed(()) }
                        // A peer that never sends its SETTINGS: the connection closes, which
                        // fails the wait (in the watcher, once).
                        let timeout = channel.eventLoop.scheduleTask(in: limits.tlsHandshakeTimeout) { channel.close(promise: nil) }
                        settings.futureResult.whenComplete { _ in timeout.cancel() }
                    } catch {
                        ready.fail(error)
                        settings.fail(error)
                        throw error
                    }
                }
            }
            .connect(host: key.address.host, port: key.address.port)
            .flatMap { channel in
                (verifier == nil ? settings.futureResult : ready.futureResult.and(settings.futureResult).map { _ in })
                    .flatMapThrowing { (_: Void) throws -> HTTP2Connection in
                    let handler = try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self)
                    onConnection?(channel)
                    let watcher = try channel.pipeline.syncOperations.handler(type: HTTP2GoAwayWatcher.self)
                    let connection = HTTP2Connection(channel: channel, multiplexer: try handler.syncMultiplexer(), watcher: watcher)
                    watcher.onGoAway = { [weak self, weak connection] in
                        guard let self, let connection else { return }
                        self.retire(connection, key: key)
                    }
                    return connection
                }
                .flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            }
        http2Pending[key] = future
        future.whenComplete { [weak self] (result: Result<HTTP2Connection, Error>) in
            guard let self else { return }
            self.http2Pending[key] = nil
            if case .success(let connection) = result {
                self.http2Open[key, default: []].append(connection)
                connection.channel.closeFuture.whenComplete { [weak self] _ in self?.forgetHTTP2(connection, key: key) }
            }
        }
        return future
    }
}
