import Logging
import MeshCore
import MeshIdentity
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

/// Where a request goes next: an address, and — for a mesh hop — the identity the peer must
/// prove in the TLS handshake.
///
/// The fields live in one shared object: a key is copied about twenty times per request
/// (routes, the pool, the exchange), and a copy of the fields retained each of their strings.
/// Keys are made once per registry update, so two equal keys are nearly always the same
/// object, which `==` checks first.
struct UpstreamKey: Hashable, Sendable {
    private final class Fields: Sendable {
        let address: HostPort
        let peerIdentity: SPIFFEID?
        /// Hashed once: the pool looks a key up twice per request, and hashing its strings
        /// each time showed in the profile.
        let hash: Int

        init(address: HostPort, peerIdentity: SPIFFEID?) {
            self.address = address
            self.peerIdentity = peerIdentity
            var hasher = Hasher()
            hasher.combine(address)
            hasher.combine(peerIdentity)
            self.hash = hasher.finalize()
        }
    }

    private let fields: Fields

    var address: HostPort { fields.address }
    /// nil: plain HTTP (the local app). Set: mTLS, and the peer must be exactly this ID.
    var peerIdentity: SPIFFEID? { fields.peerIdentity }

    init(address: HostPort, peerIdentity: SPIFFEID?) {
        fields = Fields(address: address, peerIdentity: peerIdentity)
    }

    static func == (lhs: UpstreamKey, rhs: UpstreamKey) -> Bool {
        lhs.fields === rhs.fields
            || (lhs.fields.hash == rhs.fields.hash && lhs.address == rhs.address && lhs.peerIdentity == rhs.peerIdentity)
    }

    func hash(into hasher: inout Hasher) { hasher.combine(fields.hash) }
}

/// Keep-alive connections to upstreams, per event loop (so never shared across threads and
/// never locked). Idle connections are reused newest first; a closed one drops out by itself.
final class UpstreamPool {
    let eventLoop: EventLoop
    let limits: ProxyLimits
    private var idle: [UpstreamKey: [UpstreamConnection]] = [:]
    /// Telemetry hooks, set with the proxy's metrics: a connection made, a handshake failed.
    var onConnection: ((Channel) -> Void)?
    var onHandshakeFailure: ((TLSFailureReason) -> Void)?
    /// Every open connection to a peer proxy (pooled or lent out), for TCP_INFO sampling.
    private var peers: [ObjectIdentifier: UpstreamConnection] = [:]
    /// HTTP/2 connections per upstream (streams multiplexed; another one only while the
    /// first has ``HTTP2Connection/maxConcurrentStreams`` open) and the one being made
    /// (`HTTP/HTTP2Support.swift`).
    var http2Open: [UpstreamKey: [HTTP2Connection]] = [:]
    var http2Pending: [UpstreamKey: EventLoopFuture<HTTP2Connection>] = [:]
    /// The express path's connections (``ExpressUpstream``): idle ones, and every open one
    /// to a peer proxy.
    private var expressIdle: [UpstreamKey: ExpressIdleList] = [:]
    private var expressPeers: [ObjectIdentifier: ExpressUpstream] = [:]
    /// The idle list of the upstream used last: consecutive requests nearly always go to the
    /// same one, and a key compares (its fields are one shared object) faster than it hashes.
    private var lastExpressIdle: (key: UpstreamKey, list: ExpressIdleList)?

    /// Idle express connections to one upstream, newest last. A class: taking a connection
    /// and giving it back find the list once and change it in place (changing an array inside
    /// the dictionary went through its in-place accessor, ~1k instructions per request).
    private final class ExpressIdleList {
        var connections: [ExpressUpstream] = []
    }

    private func expressIdleList(_ key: UpstreamKey, create: Bool) -> ExpressIdleList? {
        if let last = lastExpressIdle, last.key == key { return last.list }
        let list: ExpressIdleList
        if let existing = expressIdle[key] {
            list = existing
        } else {
            guard create else { return nil }
            list = ExpressIdleList()
            expressIdle[key] = list
        }
        lastExpressIdle = (key, list)
        return list
    }

    init(eventLoop: EventLoop, limits: ProxyLimits) {
        self.eventLoop = eventLoop
        self.limits = limits
    }

    /// A ready connection: pooled if one is idle, else a new one (TLS handshake and peer
    /// verification done before it is handed out, so a wrong peer is a connect failure).
    /// - Parameter fresh: skip idle connections (used to replay a request whose pooled
    ///   connection was closed by the peer before it answered).
    func acquire(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?,
                 fresh: Bool = false) -> EventLoopFuture<UpstreamConnection> {
        while !fresh, var list = idle[key], let connection = list.popLast() {
            idle[key] = list.isEmpty ? nil : list
            if connection.channel.isActive {
                connection.uses += 1
                return eventLoop.makeSucceededFuture(connection)
            }
        }
        return connect(key, clientTLS: clientTLS, bundle: bundle)
    }

    /// An idle connection to `key`, if there is one (no future, no allocation).
    func takeIdle(_ key: UpstreamKey) -> UpstreamConnection? {
        // In place (no copy of the list), and an emptied list stays for the next release.
        while let connection = idle[key]?.popLast() {
            if connection.channel.isActive {
                connection.uses += 1
                return connection
            }
        }
        return nil
    }

    /// Returns a connection after a complete exchange that both sides kept alive.
    func release(_ connection: UpstreamConnection) {
        guard connection.channel.isActive else { return }
        if !Self.keep(connection, in: &idle[connection.key, default: []], max: limits.maxIdlePerUpstream) {
            connection.channel.close(promise: nil)
        }
    }

    /// An idle express connection to `key`, if there is one.
    func takeIdleExpress(_ key: UpstreamKey) -> ExpressUpstream? {
        guard let list = expressIdleList(key, create: false) else { return nil }
        while let connection = list.connections.popLast() {
            if connection.channel.isActive {
                connection.uses += 1
                return connection
            }
        }
        return nil
    }

    /// Returns an express connection after a complete exchange that both sides kept alive.
    func releaseExpress(_ connection: ExpressUpstream) {
        guard connection.channel.isActive, let list = expressIdleList(connection.key, create: true) else { return }
        if !Self.keep(connection, in: &list.connections, max: limits.maxIdlePerUpstream) {
            connection.channel.close(promise: nil)
        }
    }

    /// A new express connection, ready (TLS handshake and peer check done).
    func acquireExpress(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?) -> EventLoopFuture<ExpressUpstream> {
        connectChannel(key, clientTLS: clientTLS, bundle: bundle, http: false).flatMapThrowing { channel in
            let sync = channel.pipeline.syncOperations
            let connection = ExpressUpstream(key: key, channel: channel)
            do {
                // The handler that saw the handshake through steps aside for the byte reader.
                try sync.removeHandler(try sync.handler(type: UpstreamHandler.self), promise: nil)
                try sync.addHandler(connection)
            } catch {
                channel.close(promise: nil)
                throw error
            }
            if key.peerIdentity != nil { self.expressPeers[ObjectIdentifier(connection)] = connection }
            channel.closeFuture.whenComplete { [weak self] _ in
                guard let self else { return }
                if let list = self.expressIdle[key] {
                    list.connections.removeAll { $0 === connection }
                    if list.connections.isEmpty {
                        self.expressIdle[key] = nil
                        if self.lastExpressIdle?.list === list { self.lastExpressIdle = nil }
                    }
                }
                self.expressPeers[ObjectIdentifier(connection)] = nil
            }
            return connection
        }
    }

    /// Appends to the list unless it is full; one dictionary access for the check and the
    /// append together (a connection comes back after every request).
    private static func keep<Connection>(_ connection: Connection, in list: inout [Connection], max: Int) -> Bool {
        guard list.count < max else { return false }
        list.append(connection)
        return true
    }

    fileprivate func forget(_ connection: UpstreamConnection) {
        guard var list = idle[connection.key] else { return }
        list.removeAll { $0 === connection }
        idle[connection.key] = list.isEmpty ? nil : list
    }

    /// What the kernel knows of each connection to a peer proxy: smoothed RTT and its
    /// variance (microseconds) and the retransmissions since the last sample, handed to
    /// `report` one connection at a time. Linux only; nothing elsewhere.
    func sampleTCPInfo(_ report: @escaping (TCPPathSample) -> Void) {
        #if os(Linux)
        for connection in peers.values {
            guard let service = connection.key.peerIdentity?.service,
                  let provider = connection.channel as? SocketOptionProvider else { continue }
            provider.getTCPInfo().whenSuccess { info in
                let retransmits = info.tcpi_total_retrans &- connection.reportedRetransmits
                connection.reportedRetransmits = info.tcpi_total_retrans
                report(TCPPathSample(destination: service, rttMicros: info.tcpi_rtt, rttVarianceMicros: info.tcpi_rttvar,
                                     retransmits: retransmits))
            }
        }
        for connection in expressPeers.values {
            guard let service = connection.key.peerIdentity?.service,
                  let provider = connection.channel as? SocketOptionProvider else { continue }
            provider.getTCPInfo().whenSuccess { info in
                let retransmits = info.tcpi_total_retrans &- connection.reportedRetransmits
                connection.reportedRetransmits = info.tcpi_total_retrans
                report(TCPPathSample(destination: service, rttMicros: info.tcpi_rtt, rttVarianceMicros: info.tcpi_rttvar,
                                     retransmits: retransmits))
            }
        }
        for (key, connections) in http2Open {
            guard let service = key.peerIdentity?.service else { continue }
            for connection in connections {
                guard let provider = connection.channel as? SocketOptionProvider else { continue }
                provider.getTCPInfo().whenSuccess { info in
                    let retransmits = info.tcpi_total_retrans &- connection.reportedRetransmits
                    connection.reportedRetransmits = info.tcpi_total_retrans
                    report(TCPPathSample(destination: service, rttMicros: info.tcpi_rtt, rttVarianceMicros: info.tcpi_rttvar,
                                         retransmits: retransmits))
                }
            }
        }
        #endif
    }

    /// Closes every idle connection (shutdown).
    func closeAll() {
        for connection in idle.values.joined() { connection.channel.close(promise: nil) }
        idle.removeAll()
        for connection in expressIdle.values.map(\.connections).joined() { connection.channel.close(promise: nil) }
        expressIdle.removeAll()
        lastExpressIdle = nil
        for connection in http2Open.values.joined() { connection.channel.close(mode: .all, promise: nil) }
        http2Open.removeAll()
    }

    private func connect(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?) -> EventLoopFuture<UpstreamConnection> {
        connectChannel(key, clientTLS: clientTLS, bundle: bundle, http: true).flatMapThrowing { channel in
            guard let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamHandler.self) else {
                channel.close(promise: nil)
                throw MeshError(.unavailable, "the upstream connection closed before it was ready")
            }
            let connection = UpstreamConnection(key: key, channel: channel, handler: handler)
            if key.peerIdentity != nil { self.peers[ObjectIdentifier(connection)] = connection }
            channel.closeFuture.whenComplete { [weak self] _ in
                self?.forget(connection)
                self?.peers[ObjectIdentifier(connection)] = nil
            }
            return connection
        }
    }

    /// A connected channel, handshake done; `http`: with NIO's HTTP/1.1 client codec (the
    /// full stack), else bytes (the express path).
    private func connectChannel(_ key: UpstreamKey, clientTLS: NIOSSLContext?, bundle: TrustBundle?,
                                http: Bool) -> EventLoopFuture<Channel> {
        let ready = eventLoop.makePromise(of: Void.self)
        var verifier: SPIFFEPeerVerifier?
        if let expected = key.peerIdentity {
            guard clientTLS != nil, let bundle else {
                return eventLoop.makeFailedFuture(MeshError(.unavailable, "this proxy has no SVID yet"))
            }
            verifier = SPIFFEPeerVerifier(bundle: bundle, expected: [expected], usage: .serverAuth)
        }
        let tlsContext = clientTLS
        let handshakeTimeout = limits.tlsHandshakeTimeout
        let onHandshakeFailure = self.onHandshakeFailure
        let onConnection = self.onConnection
        return ClientBootstrap.dataPath(on: eventLoop, limits: limits)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let verifier, let tlsContext {
                        try sync.addPeerTLS(tlsContext, verifier: verifier)
                    }
                    if http {
                        // A request's head and body parts leave as one TLS record, not one each.
                        if verifier != nil { try sync.addHandler(FlushCoalescer(deferringFlushes: false)) }
                        // Bytes past a 101 (WebSocket frames sent at once) are handed on, not dropped.
                        // No header validator: see `OutboundListener.addHTTPStack`.
                        try sync.addHTTPClientHandlers(leftOverBytesStrategy: .forwardBytes, enableOutboundHeaderValidation: false)
                    }
                    try sync.addHandler(UpstreamHandler(ready: ready, expectsTLS: verifier != nil,
                                                        handshakeTimeout: handshakeTimeout, onHandshakeFailure: onHandshakeFailure))
                }
            }
            .connect(host: key.address.host, port: key.address.port)
            .flatMap { channel in
                onConnection?(channel)
                return ready.futureResult.map { channel }
                    .flatMapErrorThrowing { error in
                        channel.close(promise: nil)
                        throw error
                    }
            }
    }
}

/// One TCP_INFO reading of a connection to a peer proxy.
struct TCPPathSample {
    var destination: ServiceName
    var rttMicros: UInt32
    var rttVarianceMicros: UInt32
    var retransmits: UInt32
}

/// One upstream connection with its HTTP client pipeline.
final class UpstreamConnection {
    let key: UpstreamKey
    let channel: Channel
    let handler: UpstreamHandler
    /// Exchanges this connection has carried (1 for a new one).
    var uses = 1
    /// An HTTP/2 stream: one exchange, then closed (the connection under it is shared).
    let isStream: Bool
    /// The kernel's retransmission total at the last TCP_INFO sample.
    var reportedRetransmits: UInt32 = 0

    init(key: UpstreamKey, channel: Channel, handler: UpstreamHandler, isStream: Bool = false) {
        self.isStream = isStream
        self.key = key
        self.channel = channel
        self.handler = handler
    }
}

/// Receives the response parts of an upstream connection and hands them to whichever
/// downstream exchange currently owns the connection.
final class UpstreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    /// The exchange the next response belongs to; set while a request is in flight, and
    /// cleared when its response ends, when the connection goes back to the pool, and when
    /// either side closes. A reference, not a closure, so that lending a connection allocates
    /// nothing; a strong one, because a weak reference gives the exchange's handler a side
    /// table, and every retain and release of it (several per request) then takes the
    /// runtime's slow path.
    var responder: UpstreamResponder?
    /// Whether the last response allowed reuse of the connection.
    var keepAlive = true
    /// The connection switched to WebSocket: HTTP parts still in this read are not anyone's.
    var upgraded = false
    /// A response was read to its end (an HTTP/2 stream that closes without one was reset).
    private(set) var responseCompleted = false
    private var ready: EventLoopPromise<Void>?
    private let expectsTLS: Bool
    private let handshakeTimeout: TimeAmount
    private var timeout: Scheduled<Void>?
    private let onHandshakeFailure: ((TLSFailureReason) -> Void)?
    /// Connected and handshaking: a failure now is a TLS handshake failure.
    private var handshaking = false

    init(ready: EventLoopPromise<Void>, expectsTLS: Bool, handshakeTimeout: TimeAmount,
         onHandshakeFailure: ((TLSFailureReason) -> Void)? = nil) {
        self.ready = ready
        self.expectsTLS = expectsTLS
        self.handshakeTimeout = handshakeTimeout
        self.onHandshakeFailure = onHandshakeFailure
    }

    func channelActive(context: ChannelHandlerContext) {
        if expectsTLS {
            handshaking = true
            let channel = context.channel
            // Held strongly until the handshake ends (the task is cancelled then) or times
            // out: a weak capture would slow every retain of this handler (see `responder`).
            timeout = context.eventLoop.scheduleTask(in: handshakeTimeout) { [self] in
                fail(MeshError(.unavailable, "TLS handshake with the peer timed out"), reason: .timeout)
                channel.close(promise: nil)
            }
        } else {
            succeed()
        }
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive && !expectsTLS { succeed() }
    }

    /// A connect that fails never makes the channel active: the promise is settled here so
    /// that it never leaks.
    func handlerRemoved(context: ChannelHandlerContext) {
        fail(MeshError(.unavailable, "the upstream connection closed before it was ready"), reason: .closed)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event { succeed() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if upgraded { return }
        guard let responder else {
            // A response nobody asked for: the connection is out of step, drop it.
            context.close(promise: nil)
            return
        }
        if case .end = part {
            self.responder = nil
            responseCompleted = true
        }
        responder.upstreamEvent(.part(part))
    }

    /// The parts of this read have been handed on: the exchange flushes them downstream now,
    /// once per read rather than once per part (and a streamed body moves as it arrives).
    func channelReadComplete(context: ChannelHandlerContext) {
        responder?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    /// The request's bytes pile up in front of a slow upstream: the exchange stops reading
    /// its caller until they drain.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        responder?.upstreamWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(error, reason: TLSFailureReason(describing: error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(MeshError(.unavailable, "upstream closed the connection"), reason: .closed)
        if let responder {
            self.responder = nil
            responder.upstreamEvent(.closed)
        }
        context.fireChannelInactive()
    }

    private func succeed() {
        handshaking = false
        timeout?.cancel()
        timeout = nil
        ready?.succeed(())
        ready = nil
    }

    /// Settles the ready promise with `error` if it is still open; counts a handshake
    /// failure (with `reason`) when the connection was handshaking.
    /// `reason` is worked out only then: it reads the error's description, about 0.5 M
    /// instructions, and every reset stream of an h2 connection comes here too.
    private func fail(_ error: Error, reason: @autoclosure () -> TLSFailureReason) {
        if handshaking, ready != nil {
            handshaking = false
            onHandshakeFailure?(reason())
        }
        timeout?.cancel()
        timeout = nil
        ready?.fail(error)
        ready = nil
    }
}

/// Receives the response of an upstream exchange (the downstream side's handler).
protocol UpstreamResponder: AnyObject {
    func upstreamEvent(_ event: UpstreamEvent)
    /// The upstream's read is over: flush what its parts wrote downstream.
    func upstreamReadComplete()
    /// The upstream connection can (true) or cannot (false) take more of the request now.
    func upstreamWritabilityChanged(_ writable: Bool)
}

enum UpstreamEvent {
    case part(HTTPClientResponsePart)
    /// The connection closed before the response ended.
    case closed
}
