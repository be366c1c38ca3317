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

    static func bind(_ address: HostPort, app: HostPort, group: EventLoopGroup, states: LoopStates,
                     limits: ProxyLimits, logger: Logger) async throws -> Channel {
        let router: Router = { head, info, state in
            route(head, info: &info, state: state, appPort: app.port, logger: logger, app: app)
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
                        let addHTTP: (ChannelPipeline.SynchronousOperations) throws -> Void = { sync in
                            try sync.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                            try sync.addHandler(IdleCloseHandler())
                            try sync.addHandler(RequestHeaderTimer(limit: limits.requestHeaderTimeout))
                            try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                            try sync.addHandler(HTTPParseErrorResponder())
                            try sync.addHandler(ProxyHTTPHandler(role: "inbound", router: router, states: states, logger: logger))
                        }
                        switch state.mtlsMode {
                        case .strict:
                            try addTLS(sync)
                            try addHTTP(sync)
                        case .permissive:
                            try sync.addHandler(TLSSniffer(timeout: limits.tlsHandshakeTimeout) { sync, isTLS in
                                if isTLS { try addTLS(sync) }
                                try addHTTP(sync)
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
    private let configure: (ChannelPipeline.SynchronousOperations, Bool) throws -> Void
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount, configure: @escaping (ChannelPipeline.SynchronousOperations, Bool) throws -> Void) {
        self.timeout = timeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
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
    static func route(_ head: HTTPRequestHead, info: inout DownstreamInfo, state: LoopState, appPort: Int,
                      logger: Logger, app: HostPort) -> RouteDecision {
        let peer = info.peerHeaderValue
        if peer == nil && state.mtlsMode == .strict {
            // A plaintext connection accepted while the service was permissive: the mode is
            // strict now, so it gets no further.
            return .respond(.forbidden, code: "plaintext-refused", message: "this service accepts mTLS only")
        }
        // What is authorized is what is forwarded: the normalized target.
        let path: String
        var head = head
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
        if let decision = authorize(head, path: path, info: &info, state: state, appPort: appPort, logger: logger) {
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
        return .forward(candidates: [UpstreamKey(address: app, peerIdentity: nil)], head: head)
    }

    /// nil when the request may pass; a denial otherwise. Connection-level (L4) decisions are
    /// cached on the connection until the policies or registry change.
    private static func authorize(_ head: HTTPRequestHead, path: String, info: inout DownstreamInfo, state: LoopState,
                                  appPort: Int, logger: Logger) -> RouteDecision? {
        guard let service = state.selfService else {
            // No identity of our own yet: never widen access.
            return .deny(code: "not-ready", requestID: makeRequestID())
        }
        let version = state.generation
        let cacheable = !state.policiesNeedL7 && !state.policiesExpire
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
        if state.policiesUseHeaders {
            for (name, value) in head.headers { headers[name.lowercased(), default: []].append(value) }
        }
        let l7 = state.policiesNeedL7
        let decision = state.evaluator.evaluate(RequestAttributes(
            destination: service, destinationLabels: state.selfLabels, callerIdentity: info.peerHeaderValue,
            callerService: info.peer?.service, callerLabels: info.callerLabels, callerAddress: info.remoteAddress?.ipAddress,
            port: appPort, method: l7 ? head.method.rawValue : nil, path: l7 ? path : nil, headers: headers))
        if cacheable { info.l4Decision = (version, decision.allowed, decision.code.rawValue, decision.policy) }
        info.lastDecision = (decision.code.rawValue, decision.policy)
        state.countDecision(policy: decision.policy, action: decision.allowed ? "allow" : "deny", code: decision.code.rawValue)
        for policy in decision.wouldDeny { state.countDecision(policy: policy, action: "audit-deny", code: "would-deny") }
        if !decision.wouldDeny.isEmpty {
            logger.notice("audit: request would be denied", metadata: [
                "caller": "\(info.peerHeaderValue ?? "unauthenticated")", "method": "\(head.method.rawValue)", "path": "\(path)",
                "would_deny": "\(decision.wouldDeny.joined(separator: ","))"])
        }
        guard !decision.allowed else { return nil }
        let requestID = makeRequestID()
        logger.notice("request denied by policy", metadata: [
            "request_id": "\(requestID)", "code": "\(decision.code.rawValue)", "policy": "\(decision.policy ?? "-")",
            "caller": "\(info.peerHeaderValue ?? "unauthenticated")", "method": "\(head.method.rawValue)", "path": "\(path)",
            "explanation": "\(decision.explanation.joined(separator: " | "))"])
        state.denialSink?.add(DenialRecord(
            requestID: requestID, at: Date(), destination: service, caller: info.peerHeaderValue ?? "unauthenticated",
            callerAddress: info.remoteAddress?.ipAddress, method: head.method.rawValue, path: path, code: decision.code.rawValue,
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
