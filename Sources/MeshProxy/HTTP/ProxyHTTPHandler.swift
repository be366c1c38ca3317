import Logging
import MeshCore
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOHTTP1
import Tracing

/// Forwards HTTP/1.1 exchanges from a downstream connection to pooled upstream connections.
///
/// One handler per downstream connection, right after the HTTP codec. Everything happens on
/// the connection's event loop: no locks, no tasks. The router (inbound or outbound) decides
/// where each request goes.
///
/// The handler also does what separate handlers did before them on every read and write
/// (each hop through a pipeline costs a type-erased wrap and unwrap): it holds pipelined
/// requests until the current exchange ends (``DownstreamFlow``), closes the connection after
/// its idle timeout, and answers requests the decoder cannot parse (400, or 431 for an
/// oversized head).
final class ProxyHTTPHandler: ChannelInboundHandler, RemovableChannelHandler, UpstreamResponder {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    enum State {
        case idle
        /// Waiting for an upstream connection; parts that arrive meanwhile are held.
        case connecting(pending: [HTTPServerRequestPart], pendingBytes: Int, requestEnded: Bool)
        case forwarding(UpstreamConnection, requestEnded: Bool, responseStarted: Bool)
        /// Answered locally (or upstream finished early): drop the rest of the request.
        case discarding
        /// Switched to WebSocket: the connection is handed to a relay (``switchToWebSocket``).
        case upgraded
    }

    private let role: String
    let direction: ProxyMetrics.Direction
    private let router: Router
    private let states: LoopStates
    let logger: Logger
    var state: State = .idle
    var info = DownstreamInfo()
    private var infoLoaded = false
    var keepAlive = true
    var context: ChannelHandlerContext?
    var loopState: LoopState?
    /// A copy of the current request while it may still be replayed: a keep-alive connection
    /// the peer closed just as we reused it is the one failure a proxy must hide. Only
    /// idempotent requests with small bodies qualify, and only once.
    var replay: [HTTPServerRequestPart]?
    var replayBytes = 0
    private var replayed = false
    /// Timing, sizes and edge of the current exchange, recorded when it ends.
    var exchange = Exchange(start: 0)
    /// Counts this connection's exchanges: a timer or a scheduled retry of an exchange that is
    /// over finds a different number and does nothing.
    var serial: UInt64 = 0
    var requestTimer: Scheduled<Void>?
    /// Close once the current request's end has been read (see ``closeWhenRequestRead``).
    var closeOnRequestEnd = false
    private var discardedBytes = 0
    var tryTimer: Scheduled<Void>?
    /// Pipelined requests, the idle clock and why reading is paused.
    var flow: DownstreamFlow
    private static let maxReplayBytes = 64 * 1024
    /// The current request asks for `Upgrade: websocket`.
    var upgrading = false
    /// The current request came over HTTP/2: it goes upstream over HTTP/2 too.
    var http2 = false
    /// The current request is a HEAD: a local answer has headers only (HTTP/1.1's encoder
    /// drops such a body by itself, HTTP/2's would send it and break the stream).
    private var headRequest = false
    /// Inbound: the request is an HTTP/1.1 request the caller's proxy carried over HTTP/2; it
    /// goes to the app as HTTP/1.1.
    private var carriedHTTP1 = false
    /// Inbound, a carried HTTP/1.1 request that had no body: DATA that still arrives is
    /// dropped, never written unframed to the app (where it would read as another request).
    private var carriedWithoutBody = false
    /// Outbound: an HTTP/1.1 request that goes to a peer proxy over HTTP/2
    /// (``ProxyLimits/http1OverHTTP2``).
    private var peerOverHTTP2 = false
    /// gRPC status fields of a trailers-only answer, sent on as trailers (see `upstreamEvent`).
    private var heldTrailers: HTTPHeaders?

    /// Inbound: re-authorizes an upgraded connection (``StreamAuthorizer``).
    let streamAuthorizer: StreamAuthorizer?
    /// An HTTP/2 stream's connection-wide caller identity (nil on an HTTP/1.1 connection,
    /// whose handler reads it once itself).
    private let connectionPeer: ConnectionPeer?
    /// Inbound: the upgrade request as it was authorized and forwarded, while upgrading, and
    /// the policy generation it was authorized under.
    var upgradeHead: HTTPRequestHead?
    var upgradeGeneration: UInt64 = 0

    /// - Parameters:
    ///   - idleTimeout: closes the connection after this long without a read or a write; nil
    ///     where something else bounds it (an HTTP/2 stream).
    ///   - headerTimer: the connection's request-header timer (slowloris), restarted at each
    ///     request; nil for an HTTP/2 stream, whose connection's limits apply.
    init(role: String, router: @escaping Router, streamAuthorizer: StreamAuthorizer? = nil,
         connectionPeer: ConnectionPeer? = nil, states: LoopStates, idleTimeout: TimeAmount? = nil,
         headerTimer: RequestHeaderTimer? = nil, logger: Logger) {
        self.flow = DownstreamFlow(idleTimeout: idleTimeout)
        self.headerTimer = headerTimer
        self.connectionPeer = connectionPeer
        self.streamAuthorizer = streamAuthorizer
        self.role = role
        self.direction = role == "inbound" ? .inbound : .outbound
        self.router = router
        self.states = states
        self.logger = logger
    }

    var headerTimer: RequestHeaderTimer?
    /// Inside a read of the downstream: writes upstream wait for its end to be flushed
    /// together (a request's head, body and end leave in one TLS record and one write).
    var inRead = false
    /// The upstream channel written to in this read and not flushed yet.
    var unflushedUpstream: Channel?
    /// Response parts written downstream since the last flush.
    var downstreamUnflushed = false
    /// The upstream connection's reading was stopped while the caller could not take more.
    private var upstreamReadPaused = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.loopState = states.state(on: context.eventLoop)
        armIdleTimer(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        flow.idleTimer?.cancel()
        flow.idleTimer = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        inRead = true
        flow.touch()
        if flow.mustHold(part, exchangeOpen: exchangeOpen) {
            // A pipelined request: it waits for the current exchange's end (answers go out in
            // order), and reading stops until it has been taken on.
            if flow.hold(part) { pauseReading(.pipelined) } else {
                logger.info("pipelined requests over the limit; closing the connection", metadata: ["role": "\(role)"])
                context.close(promise: nil)
            }
            return
        }
        handle(part, context: context)
    }

    /// Whether an exchange is under way: a head that arrives now is pipelined.
    var exchangeOpen: Bool {
        switch state {
        case .connecting, .forwarding, .discarding: return true
        case .idle, .upgraded: return false
        }
    }

    func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        // A carried request without a body gets none: DATA is dropped before anything (the
        // replay copy included) could write it unframed to the app.
        if carriedWithoutBody, case .body = part { return }
        keepForReplay(part)
        if case .body(let chunk) = part { exchange.requestBytes += chunk.readableBytes }
        switch (state, part) {
        case (.idle, .head(let head)):
            begin(head, context: context)
        case (.idle, _):
            break // Stray body after a local answer was completed; ignore.
        case (.connecting(var pending, var bytes, _), _):
            if case .body(let chunk) = part { bytes += chunk.readableBytes }
            let ended: Bool
            if case .end = part { ended = true } else { ended = false }
            pending.append(part)
            state = .connecting(pending: pending, pendingBytes: bytes, requestEnded: ended)
            if bytes > (loopState?.pool.limits.maxPendingBodyBytes ?? 1 << 20) {
                // Stop reading until the upstream is there: the buffer stays bounded.
                pauseReading(.pendingBody)
            }
        case (.forwarding(let upstream, _, let started), _):
            let ended: Bool
            if case .end = part { ended = true } else { ended = false }
            state = .forwarding(upstream, requestEnded: ended, responseStarted: started)
            upstream.channel.write(clientPart(part), promise: nil)
            flushUpstream(upstream.channel)
        case (.discarding, .end):
            state = .idle
            requestDone()
            if closeOnRequestEnd {
                closeOnRequestEnd = false
                context.close(promise: nil)
            }
        case (.discarding, .body(let chunk)) where closeOnRequestEnd:
            // Waiting for the end only to close politely: not for long.
            discardedBytes += chunk.readableBytes
            if discardedBytes > 1 << 20 { context.close(promise: nil) }
        case (.discarding, _), (.upgraded, _):
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        flow.idleTimer?.cancel()
        flow.idleTimer = nil
        flow.dropHeld()
        switch state {
        case .forwarding(let upstream, _, _):
            upstream.handler.responder = nil
            upstream.channel.close(promise: nil)
            // The caller gave up (or timed out): recorded with status 0, a failure — of the
            // exchange, not of the endpoint, which outlier detection must not blame.
            exchange.releaseEndpoint()
            exchange.status = 0
            recordExchange()
            finishExchange()
        case .connecting:
            exchange.releaseEndpoint()
            exchange.status = 0
            recordExchange()
            finishExchange()
        case .idle, .discarding, .upgraded:
            break
        }
        state = .idle
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure: stop reading the upstream while the downstream cannot take more.
        if case .forwarding(let upstream, _, _) = state {
            upstreamReadPaused = !context.channel.isWritable
            setAutoRead(context.channel.isWritable, upstream.channel)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parseError = error as? HTTPParserError {
            parseFailed(parseError, context: context)
            return
        }
        logger.debug("downstream connection error", metadata: ["role": "\(role)", "error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: - Request start

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        headerTimer?.headReceived()
        http2 = head.version.major == 2
        headRequest = head.method == .HEAD
        // An HTTP/2 stream ends with its exchange; the connection under it is not ours to close.
        keepAlive = http2 || ProxyHeaders.isKeepAlive(version: head.version, head.headers)
        // The parser stops at an upgrade request: unless the upstream switches protocols, the
        // connection closes after the answer.
        upgrading = !http2 && Self.isWebSocketUpgrade(head)
        if upgrading { keepAlive = false }
        guard let loopState else { return }
        serial &+= 1
        exchange = Exchange(start: Exchange.now())
        if !infoLoaded {
            let peer = if let connectionPeer { connectionPeer.peer(of: context) } else { PeerIdentityReader.peer(of: context) }
            info = DownstreamInfo(peer: peer,
                                  remoteAddress: context.channel.remoteAddress ?? context.channel.parent?.remoteAddress)
            infoLoaded = true
        }
        // Inbound, the edge is the verified caller; outbound, the destination once routed
        // (the hop to a peer is always mTLS), or no destination when the proxy answers
        // itself (set when the exchange is recorded: one lookup less per routed request).
        if direction == .inbound {
            exchange.edge = loopState.edge(.init(direction: .inbound, peer: info.peer?.service, tls: info.peer != nil))
        }
        // The request's details are kept only when something will use them (a sampled span
        // asks for them in `trace`).
        if loopState.accessLog != nil || loopState.tap?.isOn(exchange.start) == true {
            keepDetails(head)
        }
        if let tracer = loopState.tracer { trace(head, tracer: tracer, loopState: loopState) }
        if direction == .inbound, loopState.metrics != nil {
            exchange.topPath = (head.method.rawValue, ProxyHeaders.path(of: head.uri))
        }
        if let problem = ProxyHeaders.exceedsLimits(head, limits: loopState.pool.limits) {
            respondLocally(.init(statusCode: 431), code: "headers-too-large", message: problem, context: context)
            return
        }
        var head = head
        carriedHTTP1 = false
        carriedWithoutBody = false
        if head.headers.contains(name: ProxyHeaders.originalProtocol) {
            // Only a proxy sets it, on the HTTP/2 hop; whatever an app sent is dropped.
            if http2, direction == .inbound, let marker = head.headers.first(name: ProxyHeaders.originalProtocol) {
                carriedHTTP1 = true
                ProxyHeaders.restoreHTTP1Framing(&head.headers, marker: marker, withoutBody: &carriedWithoutBody)
            }
            head.headers.remove(name: ProxyHeaders.originalProtocol)
        }
        // HTTP/2 needs an origin-form path and an authority; anything else keeps HTTP/1.1.
        peerOverHTTP2 = direction == .outbound && !http2 && !upgrading && loopState.pool.limits.http1OverHTTP2
            && head.uri.utf8.first == UInt8(ascii: "/") && head.headers.contains(name: "host")
        if let problem = ProxyHeaders.sanitizeFraming(&head, http2: http2) {
            // Ambiguous framing is how a second request gets smuggled past the checks.
            keepAlive = false
            respondLocally(.badRequest, code: "bad-framing", message: problem, context: context)
            return
        }
        if upgrading, head.headers.contains(name: "transfer-encoding")
            || (head.headers.first(name: "content-length").flatMap(Int.init) ?? 0) > 0 {
            // Body bytes and frames would share the connection after a switch: refused.
            respondLocally(.badRequest, code: "bad-upgrade", message: "a WebSocket upgrade request must not carry a body",
                           context: context)
            return
        }
        let decision = router(head, &info, loopState)
        if exchange.log != nil, let last = info.lastDecision {
            exchange.log?.decision = last.code
            exchange.log?.policy = last.policy
        }
        switch decision {
        case .deny(let code, let requestID):
            exchange.log?.requestID = requestID
            exchange.denied = true
            respondDenied(code: code, requestID: requestID, context: context)
        case .respond(let status, let code, let message):
            respondLocally(status, code: code, message: message, context: context)
        case .forward(let candidates, var forwardHead, let subset, let matchedRoute):
            exchange.subset = subset
            if upgrading {
                Self.markUpgrade(&forwardHead.headers)
                if direction == .inbound {
                    upgradeHead = forwardHead
                    upgradeGeneration = loopState.generation
                }
            }
            if let span = exchange.span, let tracer = loopState.tracer?.tracer {
                // The next hop (the peer proxy, or the app) continues this span's trace.
                tracer.inject(span.context, into: &forwardHead.headers, using: HTTPHeadersInjector())
            } else if let parent = exchange.unsampledParent {
                forwardHead.headers.replaceOrAdd(name: "traceparent", value: parent)
                forwardHead.headers.remove(name: "tracestate")
            }
            if direction == .outbound, let destination = candidates.first?.peerIdentity?.service {
                exchange.edge = loopState.edge(.init(direction: .outbound, peer: destination, tls: true))
                exchange.route = loopState.routes[destination]
            }
            if let route = exchange.route {
                exchange.matchedRoute = matchedRoute
                let settings = route.settings(route: matchedRoute)
                route.budget.request(now: exchange.start)
                armTimers(settings, context: context)
                exchange.enterPending()
            }
            if direction == .inbound, exchange.topPath != nil {
                exchange.topPath?.path = ProxyHeaders.path(of: forwardHead.uri)
            }
            if exchange.log != nil, direction == .inbound {
                // What is logged is what was authorized and forwarded: the normalized path.
                exchange.log?.path = String(ProxyHeaders.path(of: forwardHead.uri).prefix(1024))
            }
            state = .connecting(pending: [.head(forwardHead)], pendingBytes: 0, requestEnded: false)
            replay = forwardHead.method.isIdempotent || exchange.settings?.retryNonIdempotent == true ? [.head(forwardHead)] : nil
            replayBytes = 0
            replayed = false
            loopState.inFlight += 1
            if let policy = exchange.route?.policy, policy.faultDelaySeconds > 0, loopState.random.chance(policy.faultDelayPercent / 100) {
                // Fault injection: the request waits before it goes out (timeouts run meanwhile).
                let (serial, attempt) = (self.serial, exchange.attempt)
                context.eventLoop.scheduleTask(in: .nanoseconds(Int64(policy.faultDelaySeconds * 1e9))) { [self] in
                    guard self.serial == serial, exchange.attempt == attempt, case .connecting = state, let loop = self.loopState else { return }
                    connect(candidates[...], loopState: loop, fresh: upgrading)
                }
            } else {
                // An upgrade gets a connection of its own: it will not come back to the pool,
                // and many servers switch protocols only on a connection's first request.
                connect(candidates[...], loopState: loopState, fresh: upgrading)
            }
        }
    }

    func connect(_ candidates: ArraySlice<UpstreamKey>, loopState: LoopState, fresh: Bool = false) {
        guard let key = candidates.first else { return }
        exchange.lastKey = key
        // The endpoint counts the request from now on (balancer load, circuit breaker).
        if let stats = exchange.route?.stats(for: key), exchange.endpoint !== stats {
            exchange.endpoint?.inFlight -= 1
            stats.inFlight += 1
            exchange.endpoint = stats
        }
        // A peer proxy gets HTTP/2 (an HTTP/1.1 request rides it, marked); the app gets the
        // protocol the request was made in.
        if key.peerIdentity != nil ? http2 || peerOverHTTP2 : http2 && !carriedHTTP1 {
            let (serial, attempt) = (self.serial, exchange.attempt)
            loopState.pool.acquireStream(key, clientTLS: loopState.clientH2TLS, bundle: loopState.bundle,
                                         fresh: fresh).whenComplete { [self] result in
                guard self.serial == serial, exchange.attempt == attempt else {
                    if case .success(let stream) = result { stream.channel.close(promise: nil) }
                    return
                }
                connected(result, key: key, candidates: candidates, loopState: loopState)
            }
            return
        }
        if !fresh, let upstream = loopState.pool.takeIdle(key) {
            // The common case on a busy proxy: a pooled connection, used at once.
            connected(.success(upstream), key: key, candidates: candidates, loopState: loopState)
            return
        }
        let (serial, attempt) = (self.serial, exchange.attempt)
        loopState.pool.acquire(key, clientTLS: loopState.clientTLS, bundle: loopState.bundle, fresh: fresh).whenComplete { [self] result in
            guard self.serial == serial, exchange.attempt == attempt else {
                // The exchange timed out or moved to another attempt meanwhile.
                if case .success(let upstream) = result { loopState.pool.release(upstream) }
                return
            }
            connected(result, key: key, candidates: candidates, loopState: loopState)
        }
    }

    private func connected(_ result: Result<UpstreamConnection, Error>, key: UpstreamKey,
                           candidates: ArraySlice<UpstreamKey>, loopState: LoopState) {
        guard case .connecting(let pending, let pendingBytes, let ended) = state, let context else {
            // The downstream went away meanwhile: give the connection back unused (a stream
            // is never pooled).
            if case .success(let upstream) = result {
                if upstream.isStream { upstream.channel.close(promise: nil) } else { loopState.pool.release(upstream) }
            }
            return
        }
        switch result {
        case .success(let upstream):
            exchange.lastKey = key
            exchange.leavePending()
            upstreamReadPaused = false
            state = .forwarding(upstream, requestEnded: ended, responseStarted: false)
            exchange.upstreamStart = Exchange.now()
            upstream.handler.responder = self
            let marksHTTP1 = upstream.isStream && !http2
            for part in pending {
                if marksHTTP1, case .head(var head) = part {
                    ProxyHeaders.markHTTP1(&head.headers)
                    upstream.channel.write(HTTPClientRequestPart.head(head), promise: nil)
                } else {
                    upstream.channel.write(clientPart(part), promise: nil)
                }
            }
            flushUpstream(upstream.channel)
            resumeReading(context)
        case .failure(let error):
            if let route = exchange.route, let stats = route.stats(for: key) {
                if exchange.endpoint === stats {
                    stats.inFlight -= 1
                    exchange.endpoint = nil
                }
                route.finished(stats, failed: true, latencyNanos: nil, now: Exchange.now(), logger: logger)
            }
            if candidates.count > 1 {
                logger.info("upstream connect failed, trying the next endpoint",
                            metadata: ["role": "\(role)", "upstream": "\(key.address)", "error": "\(error)"])
                connect(candidates.dropFirst(), loopState: loopState, fresh: upgrading)
                return
            }
            exchange.lastKey = key
            if exchange.settings?.retryOnConnectFailure == true,
               retry("connect-failure", upstream: nil, pending: (pending, pendingBytes, ended)) {
                return
            }
            logger.warning("upstream unavailable", metadata: ["role": "\(role)", "upstream": "\(key.address)", "error": "\(error)"])
            finishExchange()
            state = ended ? .idle : .discarding
            resumeReading(context)
            let status: HTTPResponseStatus = key.peerIdentity == nil ? .badGateway : .serviceUnavailable
            writeLocalResponse(status, code: "upstream-unavailable",
                               message: "cannot reach \(key.peerIdentity?.description ?? "the local app") at \(key.address): \(error)",
                               context: context)
            if ended { requestDone() }
        }
    }

    // MARK: - Response relay

    func upstreamEvent(_ event: UpstreamEvent) {
        guard case .forwarding(let upstream, let requestEnded, let started) = state, let context else { return }
        flow.touch()
        switch event {
        case .part(.head(let head)) where head.status.code == 101:
            guard upgrading, !started, requestEnded, head.headers.first(name: "upgrade")?.lowercased() == "websocket" else {
                // Detached first: the close reports itself at once, and this exchange is
                // answered here (not replayed, not answered twice).
                upstream.handler.responder = nil
                upstream.channel.close(promise: nil)
                finishExchange()
                state = requestEnded ? .idle : .discarding
                writeLocalResponse(.badGateway, code: "bad-upgrade",
                                   message: "the upstream switched protocols without a WebSocket upgrade being asked and agreed",
                                   context: context)
                if requestEnded { requestDone() }
                return
            }
            switchToWebSocket(head, upstream: upstream, context: context)
        case .part(.head(var head)):
            if !started, requestEnded, let policy = exchange.settings, policy.retryStatuses.contains(Int(head.status.code)),
               retry("status-\(head.status.code)", upstream: upstream) {
                return
            }
            // The timeouts run until the response starts: a long body is not cut.
            cancelTimers()
            if http2 && !carriedHTTP1 { heldTrailers = HTTP2Stack.takeTrailersOnlyStatus(&head.headers) }
            let upstreamKeepAlive = ProxyHeaders.isKeepAlive(version: head.version, head.headers)
            ProxyHeaders.stripHopByHop(&head.headers)
            exchange.responseHead = Exchange.now()
            exchange.status = Int(head.status.code)
            exchangeTiming(&head.headers)
            if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
            state = .forwarding(upstream, requestEnded: requestEnded, responseStarted: true)
            replay = nil
            upstream.handler.keepAlive = upstreamKeepAlive
            // The caller always gets HTTP/1.1 (an HTTP/2 stream's codec ignores the version);
            // set in place, since a new head is another allocation.
            head.version = .http1_1
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            downstreamUnflushed = true
        case .part(.body(let chunk)):
            exchange.responseBytes += chunk.readableBytes
            context.write(wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
            downstreamUnflushed = true
        case .part(.end(var trailers)):
            if let held = heldTrailers {
                heldTrailers = nil
                trailers = HTTPHeaders(held.map { ($0.name, $0.value) } + (trailers ?? [:]).map { ($0.name, $0.value) })
            }
            // A connection that carried a refused upgrade is not reused: the upstream's parser
            // may have stopped at the upgrade request, as ours does.
            let reusable = upstream.handler.keepAlive && requestEnded && !upgrading && !upstream.isStream
            if upstreamReadPaused {
                // Paused for this caller's sake: the next exchange on it must read its answer.
                upstreamReadPaused = false
                setAutoRead(true, upstream.channel)
            }
            if reusable {
                upstream.handler.responder = nil
                loopState?.pool.release(upstream)
            } else if !(upstream.isStream && requestEnded) {
                // A finished HTTP/2 stream closes by itself: closing it here would reset it,
                // and a peer counts resets (a flood of them ends the connection).
                upstream.channel.close(promise: nil)
            }
            recordExchange()
            finishExchange()
            state = requestEnded ? .idle : .discarding
            writeEnd(trailers, context: context)
            if requestEnded { requestDone() }
        case .closed:
            if !started, requestEnded, upstream.uses > 1, !replayed, let parts = replay, let loopState {
                replayed = true
                logger.debug("pooled connection closed by the peer; replaying on a new one",
                             metadata: ["role": "\(role)", "upstream": "\(upstream.key.address)"])
                state = .connecting(pending: parts, pendingBytes: replayBytes, requestEnded: true)
                connect([upstream.key], loopState: loopState, fresh: true)
                return
            }
            if !started, requestEnded, exchange.settings?.retryOnReset == true, retry("reset", upstream: nil) {
                return
            }
            finishExchange()
            if started {
                // Part of the response is already out: the only honest signal left is a close,
                // and the exchange counts as failed (status 0), whatever its head said.
                exchange.status = 0
                recordExchange()
                state = .idle
                context.close(promise: nil)
            } else {
                state = requestEnded ? .idle : .discarding
                writeLocalResponse(.badGateway, code: "upstream-reset",
                                   message: "the upstream closed the connection before answering", context: context)
                if requestEnded { requestDone() }
            }
        }
    }

    // MARK: - Helpers

    /// Closes a `Connection: close` connection after its response — once the request has
    /// been read to its end: closing while the client still sends makes its kernel reset the
    /// connection, and the client may lose the response it was about to read. The rest of the
    /// request is discarded as it comes (the connection's idle timer bounds a client that
    /// never finishes).
    func closeWhenRequestRead(_ context: ChannelHandlerContext) {
        if case .discarding = state {
            closeOnRequestEnd = true
            resumeReading(context)
        } else {
            context.close(promise: nil)
        }
    }

    /// Ends a response; a connection that is not kept alive closes once the request has been
    /// read (a future is made only then: the common keep-alive end allocates none).
    private func writeEnd(_ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        downstreamUnflushed = false
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(trailers))).whenComplete { _ in self.closeWhenRequestRead(context) }
        }
    }

    /// Lifts a read pause set while the upstream connection was being made.
    func resumeReading(_ context: ChannelHandlerContext) {
        resumeReading(.pendingBody)
    }

    private func keepForReplay(_ part: HTTPServerRequestPart) {
        guard replay != nil else { return }
        switch state {
        case .connecting, .forwarding: break
        case .idle, .discarding, .upgraded: return
        }
        if case .body(let chunk) = part {
            replayBytes += chunk.readableBytes
            if replayBytes > Self.maxReplayBytes {
                replay = nil
                return
            }
        }
        // In place: the copy is not shared, so appending does not copy it.
        replay?.append(part)
    }

    func finishExchange() {
        loopState?.inFlight -= 1
        // Whatever the upstream still had to take of the request is not wanted any more.
        resumeReading(.upstreamFull)
        // Still open here: the upstream closed before the exchange was recorded.
        exchange.settleEndpoint(failed: true, logger: logger)
    }

    private func respondDenied(code: String, requestID: String, context: ChannelHandlerContext) {
        state = .discarding
        writeResponse(.forbidden, body: "access denied by policy (request id \(requestID))",
                      headers: [ProxyHeaders.decision: code, ProxyHeaders.requestID: requestID], context: context)
    }

    private func respondLocally(_ status: HTTPResponseStatus, code: String, message: String, context: ChannelHandlerContext) {
        state = .discarding
        writeLocalResponse(status, code: code, message: message, context: context)
    }

    func writeLocalResponse(_ status: HTTPResponseStatus, code: String, message: String, context: ChannelHandlerContext) {
        var headers: HTTPHeaders = [ProxyHeaders.error: code]
        if status == .tooManyRequests { headers.add(name: "retry-after", value: "1") }
        writeResponse(status, body: message, headers: headers, context: context)
    }

    /// Every answer the proxy gives itself: counted, plain text, and closing the connection
    /// when the request asked for that.
    private func writeResponse(_ status: HTTPResponseStatus, body text: String, headers extra: HTTPHeaders,
                               context: ChannelHandlerContext) {
        exchange.status = Int(status.code)
        exchange.responseHead = Exchange.now()
        recordExchange()
        let body = ByteBuffer(string: "swiftmesh \(role): \(text)\n")
        var headers: HTTPHeaders = ["content-type": "text/plain; charset=utf-8", "content-length": "\(body.readableBytes)"]
        headers.add(contentsOf: extra)
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !headRequest { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        writeEnd(nil, context: context)
    }

    private func clientPart(_ part: HTTPServerRequestPart) -> HTTPClientRequestPart {
        switch part {
        case .head(let head): return .head(head)
        case .body(let buffer): return .body(.byteBuffer(buffer))
        case .end(let trailers): return .end(trailers)
        }
    }
}
