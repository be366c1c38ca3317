import struct Foundation.Date
import Logging
import MeshCore
import MeshIdentity
import MeshPolicy
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

/// The inbound stack, whole: mTLS (TLS 1.3, client SVID required, mesh bundle only, SPIFFE
/// checks) → HTTP/1.1 → normalize the path → authorize (local policies, default deny) →
/// stamp the verified caller identity → forward to the local app on a pooled keep-alive
/// connection.
enum InboundListener {
    /// `strict`: mTLS only. `permissive`: also plaintext callers from outside the mesh, who
    /// are then `unauthenticated` with their source address, for CIDR rules to admit.
    /// The mode in force is ``LoopState/mtlsMode``: the proxy's flag unless a ServiceDefaults
    /// resource sets it.
    enum MTLSMode: String, Sendable { case strict, permissive }

    /// What the app speaks (`--app-protocol`): `tcp` makes plaintext callers (permissive)
    /// opaque too; mesh callers say what they carry in the handshake.
    enum AppProtocol: String, Sendable { case http, tcp }

    static func bind(_ address: HostPort, app: HostPort, appProtocol: AppProtocol, group: EventLoopGroup, states: LoopStates,
                     limits: ProxyLimits, logger: Logger) async throws -> Channel {
        // Made once: every request to the app has the same one candidate.
        let appKeys = [UpstreamKey(address: app, peerIdentity: nil)]
        let router: Router = { head, info, state in
            route(head, info: &info, state: state, appPort: app.port, logger: logger, appKeys: appKeys)
        }
        let streamAuthorizer: StreamAuthorizer = { head, info, state in
            if info.peer == nil && state.mtlsMode == .strict { return false }
            // The target was normalized when the upgrade was authorized: this gives the same path.
            guard case .success(let normalized) = PathNormalizer.normalize(head.uri) else { return false }
            return authorize((head, normalized.path), info: &info, state: state, appPort: app.port, logger: logger) == nil
        }
        do {
            return try await ServerBootstrap.dataPath(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let state = states.state(on: channel.eventLoop)
                        guard let tls = state.serverTLS, let bundle = state.bundle else {
                            throw MeshError(.unavailable, "no SVID yet")
                        }
                        state.connectionOpened(.inbound, peer: "src", channel)
                        let sync = channel.pipeline.syncOperations
                        let addTLS: (ChannelPipeline.SynchronousOperations) throws -> Void = { sync in
                            let verifier = SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth)
                            try sync.addHandler(NIOSSLServerHandler(
                                context: tls, customVerificationCallbackWithMetadata: SPIFFEVerification.callback(verifier, logger: logger)))
                            // After the TLS handler: it must see the handshake-completed event.
                            try sync.addHandler(HandshakeTimeoutHandler(timeout: limits.tlsHandshakeTimeout) { [weak state] failure in
                                switch failure {
                                case .timeout: state?.handshakeFailed(.inbound, .timeout)
                                case .closed: state?.handshakeFailed(.inbound, .closed)
                                case .error(let error): state?.handshakeFailed(.inbound, TLSFailureReason(describing: error))
                                }
                            })
                        }
                        let idle = state.inboundIdleTimeout(limits)
                        let addHTTP: (ChannelPipeline.SynchronousOperations, _ tls: Bool) throws -> Void = { sync, tls in
                            // Run by the express handler, which puts it in the pipeline
                            // (before the full stack's handlers) as it hands the connection on.
                            let headerTimer = RequestHeaderTimer(limit: limits.requestHeaderTimeout)
                            // Simple requests go as bytes (`ExpressHandler`); the first other
                            // one moves the connection to NIO's codec and the proxy handler,
                            // which do pipelining, the idle timeout and parse errors
                            // themselves (see `DownstreamFlow`).
                            let fullStack: (ChannelPipeline.SynchronousOperations) throws -> Void = { sync in
                                // A response's head and body parts leave as one TLS record, not
                                // one each (the express path writes them as one buffer itself).
                                if tls { try sync.addHandler(FlushCoalescer(deferringFlushes: false)) }
                                try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false,
                                                                    withOutboundHeaderValidation: false)
                                try sync.addHandler(ProxyHTTPHandler(role: "inbound", router: router, streamAuthorizer: streamAuthorizer,
                                                                     states: states, idleTimeout: idle, headerTimer: headerTimer,
                                                                     logger: logger))
                            }
                            try sync.addHandler(ExpressHandler(role: "inbound", router: router, admits: { _, _ in true },
                                                               fullStack: fullStack, states: states, idleTimeout: idle,
                                                               headerTimer: headerTimer, logger: logger))
                        }
                        // An opaque stream is relayed to the app at L4 instead of the HTTP stack.
                        let addOpaque: (Channel) throws -> Void = { channel in
                            try relayOpaque(channel, state: states.state(on: channel.eventLoop), app: app, limits: limits, logger: logger)
                        }
                        // The caller's proxy names what the connection carries in the TLS
                        // handshake (ALPN); nothing is guessed from the bytes.
                        let addALPNSwitch: (ChannelPipeline.SynchronousOperations) throws -> Void = { sync in
                            try sync.addHandler(ApplicationProtocolNegotiationHandler { result, channel in
                                channel.eventLoop.makeCompletedFuture {
                                    // What the caller carries must be what the app speaks: an opaque
                                    // stream to an HTTP app would skip every HTTP check (path
                                    // normalization, L7 rules, the identity header), and HTTP to an
                                    // opaque app would pass L7 rules meant never to admit raw bytes.
                                    let opaque: Bool
                                    if case .negotiated(MeshTLS.ALPN.opaque) = result { opaque = true } else { opaque = false }
                                    if opaque != (appProtocol == .tcp) {
                                        logger.notice("connection refused: the caller's protocol is not the app's", metadata: [
                                            "caller": "\(PeerIdentity.of(channel.pipeline.syncOperations)?.description ?? "unknown")",
                                            "carries": "\(opaque ? "opaque TCP" : "HTTP")", "app_protocol": "\(appProtocol.rawValue)"])
                                        channel.close(promise: nil)
                                        return
                                    }
                                    if opaque {
                                        try addOpaque(channel)
                                    } else if case .negotiated(MeshTLS.ALPN.http2) = result {
                                        let sync = channel.pipeline.syncOperations
                                        try sync.addHandler(IdleStateHandler(allTimeout: idle))
                                        try sync.addHandler(IdleCloseHandler())
                                        try HTTP2Stack.configureServer(sync, role: "inbound", caller: .peerProxy, router: router, states: states, logger: logger)
                                    } else {
                                        try addHTTP(channel.pipeline.syncOperations, true)
                                    }
                                }
                            })
                        }
                        switch state.mtlsMode {
                        case .strict:
                            try addTLS(sync)
                            try addALPNSwitch(sync)
                        case .permissive:
                            // A server-first client of an opaque app sends nothing until the app
                            // speaks: after the detection timeout it is taken as plaintext.
                            let opaqueApp = appProtocol == .tcp
                            try sync.addHandler(TLSSniffer(timeout: opaqueApp ? limits.detectTimeout : limits.tlsHandshakeTimeout,
                                                           silenceIsPlaintext: opaqueApp) { sync, isTLS in
                                if isTLS {
                                    try addTLS(sync)
                                    try addALPNSwitch(sync)
                                } else if appProtocol == .tcp {
                                    // A plaintext caller of an opaque app: L4 policy, as unauthenticated.
                                    try addOpaque(channel)
                                } else {
                                    try addHTTP(sync, false)
                                }
                            })
                        }
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on inbound \(address): \(error)")
        }
    }
}

/// Looks at the first byte of a permissive-mode connection: a TLS handshake record (0x16)
/// gets the mTLS stack, anything else the plaintext stack. Then it steps aside.
final class TLSSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let timeout: TimeAmount
    private let silenceIsPlaintext: Bool
    private let configure: (ChannelPipeline.SynchronousOperations, Bool) throws -> Void
    private var timer: Scheduled<Void>?

    /// - Parameter silenceIsPlaintext: a caller silent for `timeout` is plaintext (an opaque
    ///   app's server-first protocol) rather than closed.
    init(timeout: TimeAmount, silenceIsPlaintext: Bool = false,
         configure: @escaping (ChannelPipeline.SynchronousOperations, Bool) throws -> Void) {
        self.timeout = timeout
        self.silenceIsPlaintext = silenceIsPlaintext
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        guard silenceIsPlaintext else {
            timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (sniffer, context) = loopBound.value
            sniffer.timer = nil
            do {
                try sniffer.configure(context.pipeline.syncOperations, false)
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            } catch {
                context.close(promise: nil)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let first = buffer.readableBytesView.first else { return }
        timer?.cancel()
        timer = nil
        do {
            // Handlers added at the end of the pipeline come after this one, so the bytes
            // just read flow into them.
            try configure(context.pipeline.syncOperations, first == 0x16)
            context.fireChannelRead(wrapInboundOut(buffer))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }
}

extension InboundListener {
    static func route(_ head: consuming HTTPRequestHead, info: inout DownstreamInfo, state: LoopState, appPort: Int,
                      logger: Logger, appKeys: [UpstreamKey]) -> RouteDecision {
        let peer = info.peerHeaderValue
        if peer == nil && state.mtlsMode == .strict {
            // A plaintext connection accepted while the service was permissive: the mode is
            // strict now, so it gets no further.
            return .respond(.forbidden, code: "plaintext-refused", message: "this service accepts mTLS only")
        }
        // What is authorized is what is forwarded: the normalized target.
        let path: String
        switch PathNormalizer.normalize(head.uri) {
        case .failure(let why):
            return .respond(.badRequest, code: "invalid-path", message: why.description)
        case .success(let normalized):
            head.uri = normalized.target
            path = normalized.path
        }
        ProxyHeaders.stripHopByHop(&head.headers)
        // Whatever the caller claimed, the app hears only what TLS proved (nothing for a
        // plaintext caller in permissive mode). Done before authorization, so that a rule
        // on headers sees what the app will see.
        ProxyHeaders.removePeerIdentity(&head.headers)
        if let peer { head.headers.add(name: ProxyHeaders.peerIdentity, value: peer) }
        if let decision = authorize((head, path), info: &info, state: state, appPort: appPort, logger: logger) {
            return decision
        }
        // Local rate limits of this service, after authorization: what is refused by policy
        // does not use up a caller's allowance.
        if !state.selfTraffic.rateLimits.isEmpty {
            let caller = info.peer?.service?.rawValue ?? "unauthenticated"
            let (limit, allowed) = state.rateLimiter.admit(state.selfTraffic.rateLimits, caller: caller, path: path,
                                                           loops: state.loopCount, now: Exchange.now())
            if !allowed, let limit {
                return .respond(.tooManyRequests, code: "rate-limited",
                                message: "more than \(limit.requestsPerSecond) requests per second \(limit.perCaller ? "from \(caller) " : "")to paths under \(limit.pathPrefix) (rateLimits of this service's TrafficPolicy); retry later")
            }
        }
        return .forward(candidates: appKeys, head: head)
    }

    /// An opaque TCP stream from a caller: authorized once at L4 (the caller's identity and
    /// the app's port), then relayed to the app byte for byte, or closed on denial.
    static func relayOpaque(_ channel: Channel, state: LoopState, app: HostPort, limits: ProxyLimits, logger: Logger) throws {
        var info = DownstreamInfo(peer: PeerIdentity.of(channel.pipeline.syncOperations), remoteAddress: channel.remoteAddress)
        let edge = state.edge(LoopState.EdgeKey(direction: .inbound, peer: info.peer?.service, tls: info.peer != nil))
        if info.peer == nil && state.mtlsMode == .strict {
            edge.opaque?.denied.increment()
            channel.close(promise: nil)
            return
        }
        if authorize(nil, info: &info, state: state, appPort: app.port, logger: logger) != nil {
            edge.opaque?.denied.increment()
            channel.close(promise: nil)
            return
        }
        let relay = TCPRelay(onBytes: { [weak edge] count in edge?.opaque?.toDestination.increment(by: Int64(count)) })
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(IdleStateHandler(allTimeout: state.inboundIdleTimeout(limits)))
        try sync.addHandler(IdleCloseHandler())
        try sync.addHandler(relay)
        // Decided once, but not for ever: the stream is checked again whenever the policies
        // change or one of them expires, and closed once it is no longer allowed.
        state.track(OpenStream(channel: channel, info: info, appPort: app.port) { [weak state] stream in
            guard let state else { return true }
            if stream.info.peer == nil && state.mtlsMode == .strict { return false }
            return authorize(nil, info: &stream.info, state: state, appPort: stream.appPort, logger: logger) == nil
        })
        OpaqueStream.relayToApp(channel, relay: relay, app: app, edge: edge, limits: limits, logger: logger)
    }

    /// nil when the request may pass; a denial otherwise. `request` nil: an opaque TCP stream,
    /// decided once at L4 (a deny rule's HTTP conditions then cover the whole stream).
    /// Connection-level (L4) decisions of HTTP connections are cached on the connection until
    /// the policies or registry change.
    static func authorize(_ request: (head: HTTPRequestHead, path: String)?, info: inout DownstreamInfo, state: LoopState,
                          appPort: Int, logger: Logger) -> RouteDecision? {
        guard let service = state.selfService else {
            // No identity of our own yet: never widen access.
            return .deny(code: "not-ready", requestID: makeRequestID())
        }
        let version = state.generation
        let cacheable = request != nil && !state.policiesNeedL7 && !state.policiesExpire
        if cacheable, let cached = info.l4Decision, cached.version == version {
            info.lastDecision = (cached.code, cached.policy)
            state.countDecision(policy: cached.policy, action: cached.allowed ? "allow" : "deny", code: cached.code)
            return cached.allowed ? nil : .deny(code: cached.code, requestID: makeRequestID())
        }
        if info.callerLabelsVersion != version {
            info.callerLabels = callerLabels(info, state)
            info.callerLabelsVersion = version
        }
        var headers: [String: [String]] = [:]
        if state.policiesUseHeaders, let head = request?.head {
            for (name, value) in head.headers { headers[name.lowercased(), default: []].append(value) }
        }
        let l7 = state.policiesNeedL7 && request != nil
        let method = request?.head.method.rawValue
        var attributes = RequestAttributes(
            destination: service, destinationLabels: state.selfLabels, callerIdentity: info.peerHeaderValue,
            callerService: info.peer?.service, callerLabels: info.callerLabels, callerAddress: info.remoteAddress?.ipAddress,
            port: appPort, method: l7 ? method : nil, path: l7 ? request?.path : nil, headers: headers)
        attributes.opaque = request == nil
        let decision = state.evaluator.evaluate(attributes)
        if cacheable { info.l4Decision = (version, decision.allowed, decision.code.rawValue, decision.policy) }
        info.lastDecision = (decision.code.rawValue, decision.policy)
        state.countDecision(policy: decision.policy, action: decision.allowed ? "allow" : "deny", code: decision.code.rawValue)
        for policy in decision.wouldDeny { state.countDecision(policy: policy, action: "audit-deny", code: "would-deny") }
        // What the logs and `mesh explain` show for an opaque stream.
        let shownMethod = method ?? "TCP"
        let shownPath = request?.path ?? "-"
        if !decision.wouldDeny.isEmpty {
            logger.notice("audit: request would be denied", metadata: [
                "caller": "\(info.peerHeaderValue ?? "unauthenticated")", "method": "\(shownMethod)", "path": "\(shownPath)",
                "would_deny": "\(decision.wouldDeny.joined(separator: ","))"])
        }
        guard !decision.allowed else { return nil }
        let requestID = makeRequestID()
        logger.notice(request == nil ? "TCP stream denied by policy" : "request denied by policy", metadata: [
            "request_id": "\(requestID)", "code": "\(decision.code.rawValue)", "policy": "\(decision.policy ?? "-")",
            "caller": "\(info.peerHeaderValue ?? "unauthenticated")", "method": "\(shownMethod)", "path": "\(shownPath)",
            "explanation": "\(decision.explanation.joined(separator: " | "))"])
        state.denialSink?.add(DenialRecord(
            requestID: requestID, at: Date(), destination: service, caller: info.peerHeaderValue ?? "unauthenticated",
            callerAddress: info.remoteAddress?.ipAddress, method: shownMethod, path: shownPath, code: decision.code.rawValue,
            policy: decision.policy, explanation: decision.explanation))
        return .deny(code: decision.code.rawValue, requestID: requestID)
    }

    /// The labels of the calling instance: the registry entry of its service at its address.
    /// No guessing: when no instance of that service is registered at that address, the
    /// caller has no labels.
    private static func callerLabels(_ info: DownstreamInfo, _ state: LoopState) -> [String: String] {
        guard let service = info.peer?.service, let address = info.remoteAddress?.ipAddress else { return [:] }
        let plain = address.hasPrefix("::ffff:") ? String(address.dropFirst(7)) : address
        guard let instance = state.registry.endpoints(of: service).first(where: { $0.address == plain || $0.address == address }) else {
            return [:]
        }
        return state.registry.policies.effectiveLabels(of: service, own: instance.labels.values)
    }

    private static func makeRequestID() -> String {
        String((0..<16).map { _ in "0123456789abcdef".randomElement() ?? "0" })
    }
}
