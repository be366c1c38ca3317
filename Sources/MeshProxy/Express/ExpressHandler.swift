import Logging
import MeshCore
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOHTTP1
import Tracing

/// The express path of an HTTP/1.1 connection: simple requests forwarded as bytes, without
/// NIO's HTTP codec on either side.
///
/// Most requests through a sidecar are a `GET` or `HEAD` with a handful of fields and no
/// body, or an API call with a small body framed by `Content-Length`. For those, the full
/// stack (llhttp decoder → ``ProxyHTTPHandler`` → encoder, and the same again towards the
/// upstream) spends most of its time turning bytes into typed parts and back (bench/results:
/// 12 of the 19 µs of user CPU per request per sidecar; an opaque TCP relay over the same
/// mTLS costs 6). This handler reads the request head from the bytes
/// (``ExpressRequestHead``), asks the same router as the full stack (so routing, policy,
/// path normalization and header hygiene are the same code), writes the forwarded head, and
/// relays the response from an ``ExpressUpstream`` as bytes: its head with the hop-by-hop
/// fields taken out, its body as it comes.
///
/// Anything else — a chunked or larger body (``ExpressRequestHead/maxBodyBytes``), an
/// `Expect`, an upgrade, a malformed or unusual head, a destination whose TrafficPolicy has
/// timeouts, retries on status codes, header routes or fault delays, the access log, a
/// `mesh tap` — moves the connection to the full stack for good, at a
/// request boundary (``fallBack``): the bytes not yet used are handed to NIO's decoder, which
/// starts with that request. Default retries (connect failure, reset), endpoint choice,
/// outlier detection, circuit breaking, metrics, tracing (the same sampling decision, span and
/// propagated context) and the hop timing are the same here.
final class ExpressHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        case idle
        case connecting
        case forwarding(ExpressUpstream, responseStarted: Bool)
        /// The full stack has the connection (this handler is leaving the pipeline).
        case fellBack
        /// The caller asked to close after the answer: whatever else it sends is dropped
        /// (llhttp refuses data after `Connection: close` too).
        case closing
    }

    private let role: String
    private let direction: ProxyMetrics.Direction
    private let router: Router
    /// Whether a parsed request may stay on the express path (the destination's settings).
    private let admits: @Sendable (HTTPRequestHead, LoopState) -> Bool
    private let fullStack: (ChannelPipeline.SynchronousOperations) throws -> Void
    private let states: LoopStates
    private let logger: Logger
    /// The connection's request-header clock (slowloris). Run by this handler rather than
    /// from the pipeline while the connection is on the express path (one handler less on
    /// every read); put in the pipeline, before the full stack, when the connection moves there.
    private let headerTimer: RequestHeaderTimer?
    private let idleTimeout: TimeAmount?

    private var phase = Phase.idle
    private var context: ChannelHandlerContext?
    private var loopState: LoopState?
    /// Bytes read and not used yet: the rest of a head, or requests pipelined behind the
    /// current one.
    private var pending: ByteBuffer?
    private var info = DownstreamInfo()
    private var infoLoaded = false
    private var keepAlive = true
    private var headRequest = false
    private var exchange = Exchange(start: 0)
    private var serial: UInt64 = 0
    /// The forwarded request, head and body, kept to send again (a retry, or a pooled
    /// connection the peer closed just as it was reused).
    private var request = ByteBuffer()
    private var replayed = false
    /// The request may be sent again once it has reached an upstream (see ``begin``); before
    /// that (a failed connect) it always may.
    private var replayable = true
    private var framing = ExpressResponseHead.Framing.none
    private var inRead = false
    private var upstreamUnflushed: Channel?
    private var downstreamUnflushed = false
    private var readingPaused = false
    private var lastActivity: UInt64 = 0
    private var idleTimer: Scheduled<Void>?

    init(role: String, router: @escaping Router, admits: @escaping @Sendable (HTTPRequestHead, LoopState) -> Bool,
         fullStack: @escaping (ChannelPipeline.SynchronousOperations) throws -> Void, states: LoopStates,
         idleTimeout: TimeAmount?, headerTimer: RequestHeaderTimer?, logger: Logger) {
        self.role = role
        self.direction = role == "inbound" ? .inbound : .outbound
        self.router = router
        self.admits = admits
        self.fullStack = fullStack
        self.states = states
        self.idleTimeout = idleTimeout
        self.headerTimer = headerTimer
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        loopState = states.state(on: context.eventLoop)
        if let idleTimeout {
            lastActivity = Exchange.now()
            scheduleIdleCheck(in: idleTimeout, context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        self.context = nil
    }

    // MARK: - Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if idleTimeout != nil { lastActivity = Exchange.now() }
        switch phase {
        case .fellBack:
            // The header timer is in the pipeline by now: it has seen these bytes.
            context.fireChannelRead(data)
            return
        case .closing:
            return
        case .idle, .connecting, .forwarding:
            headerTimer?.bytesRead()
        }
        if var held = pending, held.readableBytes > 0 {
            pending = nil
            held.writeBuffer(&bytes)
            pending = held
        } else {
            pending = bytes
        }
        inRead = true
        if case .idle = phase {
            takeNext(context)
        } else {
            holdRest(context)
        }
    }

    /// Bytes behind the request under way are pipelined requests: they wait, and reading
    /// stops until then. Held within the full stack's limits (``DownstreamFlow``): a client
    /// that pipelines more is closed. Reading stops here, so the scan runs at most for the
    /// few buffers left of the current read.
    private func holdRest(_ context: ChannelHandlerContext) {
        guard let held = pending, held.readableBytes > 0 else { return }
        if held.readableBytes > DownstreamFlow.maxHeldBytes || Self.heads(in: held) > DownstreamFlow.maxHeldRequests {
            logger.info("pipelined requests over the limit; closing the connection", metadata: ["role": "\(role)"])
            pending = nil
            context.close(promise: nil)
            return
        }
        pauseReading(context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        inRead = false
        if case .fellBack = phase {} else { headerTimer?.readEnded(on: context.channel) }
        if let channel = upstreamUnflushed {
            upstreamUnflushed = nil
            channel.flush()
        }
        if downstreamUnflushed {
            downstreamUnflushed = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    /// The ends of heads (CRLF CRLF) in held bytes: how many requests they hold, at most.
    private static func heads(in buffer: ByteBuffer) -> Int {
        buffer.withUnsafeReadableBytes { bytes in
            var count = 0
            var index = 3
            while index < bytes.count {
                if bytes[index] == 0x0A, bytes[index - 1] == 0x0D, bytes[index - 2] == 0x0A, bytes[index - 3] == 0x0D {
                    count += 1
                }
                index += 1
            }
            return count
        }
    }

    /// Starts on the next request in the held bytes, if its head is there; then on the one
    /// after it while each is answered at once (a loop, not a recursion: a read can hold
    /// thousands of requests the proxy answers itself).
    private func takeNext(_ context: ChannelHandlerContext) {
        if takingNext {
            takeAgain = true
            return
        }
        takingNext = true
        defer { takingNext = false }
        repeat {
            takeAgain = false
            takeOne(context)
        } while takeAgain
    }

    private var takingNext = false
    private var takeAgain = false
    /// How far the held bytes were searched for the end of a head: a head that arrives in
    /// many small reads is parsed once it is whole, not again on every read.
    private var scanned = 0

    private func takeOne(_ context: ChannelHandlerContext) {
        guard case .idle = phase, let loopState else { return }
        guard let buffer = pending, buffer.readableBytes > 0 else {
            pending = nil
            scanned = 0
            resumeReading(context)
            return
        }
        let limits = loopState.pool.limits
        // The first bytes of a head are parsed at once (what is not for the express path is
        // known from its first line); after that, only once the head is whole or too large.
        if scanned > 0, buffer.readableBytes <= limits.maxRequestHeaderBytes + 4,
           !Self.containsHeadEnd(buffer, from: scanned - 3) {
            scanned = buffer.readableBytes
            resumeReading(context)
            return
        }
        switch ExpressRequestHead.parse(buffer, maxHeaderBytes: limits.maxRequestHeaderBytes,
                                        maxHeaderFields: limits.maxRequestHeaderFields) {
        case .incomplete:
            scanned = buffer.readableBytes
            resumeReading(context)
        case .unsupported:
            fallBack(context)
        case .request(let head, let length, let keepAlive, let bodyLength):
            scanned = 0
            // What the express path does not do itself: the full stack does it, from here on.
            guard loopState.accessLog == nil, loopState.tap?.isOn(Exchange.now()) != true, admits(head, loopState) else {
                fallBack(context)
                return
            }
            // A body is read whole before the request goes on (it is small: at most
            // `ExpressRequestHead.maxBodyBytes`); the head is parsed again then. The head is
            // in: its clock stops, and a slow body meets the idle timeout, as on the full stack.
            guard buffer.readableBytes >= length + bodyLength else {
                headerTimer?.headReceived()
                resumeReading(context)
                return
            }
            pending?.moveReaderIndex(forwardBy: length)
            let body = bodyLength > 0 ? pending?.readSlice(length: bodyLength) : nil
            // Not kept once used up: the read buffer goes back to NIO's pool for the next read
            // (and the next request is not copied behind an empty one).
            if pending?.readableBytes == 0 { pending = nil }
            begin(consume head, body: body, keepAlive: keepAlive, context: context, loopState: loopState)
            if case .idle = phase {} else { holdRest(context) }
        }
    }

    /// Whether CRLF CRLF occurs in the readable bytes from `offset` on.
    private static func containsHeadEnd(_ buffer: ByteBuffer, from offset: Int) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            var index = max(offset, 0) + 3
            while index < bytes.count {
                if bytes[index] == 0x0A, bytes[index - 1] == 0x0D, bytes[index - 2] == 0x0A, bytes[index - 3] == 0x0D {
                    return true
                }
                index += 1
            }
            return false
        }
    }

    /// Hands the connection to the full stack, starting with the held bytes.
    private func fallBack(_ context: ChannelHandlerContext) {
        phase = .fellBack
        idleTimer?.cancel()
        idleTimer = nil
        do {
            // The clock goes on where the full stack's handlers see the reads: before them.
            if let headerTimer { try context.pipeline.syncOperations.addHandler(headerTimer, position: .before(self)) }
            try fullStack(context.pipeline.syncOperations)
        } catch {
            logger.warning("cannot set up the HTTP stack; closing the connection", metadata: ["role": "\(role)", "error": "\(error)"])
            context.close(promise: nil)
            return
        }
        resumeReading(context)
        if let bytes = pending, bytes.readableBytes > 0 {
            pending = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            // Outside a read (a request pipelined behind one answered from the upstream's
            // read), the handlers after this one would not see the read's end otherwise.
            if !inRead { context.fireChannelReadComplete() }
        }
        pending = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func begin(_ head: consuming HTTPRequestHead, body: ByteBuffer?, keepAlive: Bool, context: ChannelHandlerContext,
                       loopState: LoopState) {
        headerTimer?.headReceived()
        self.keepAlive = keepAlive
        let method = head.method
        headRequest = method == .HEAD
        serial &+= 1
        exchange = Exchange(start: Exchange.now())
        if !infoLoaded {
            info = DownstreamInfo(peer: PeerIdentityReader.peer(of: context), remoteAddress: context.channel.remoteAddress)
            infoLoaded = true
        }
        if direction == .inbound {
            exchange.edge = loopState.edge(.init(direction: .inbound, peer: info.peer?.service, tls: info.peer != nil))
            if loopState.metrics != nil { exchange.topPath = (method.rawValue, ProxyHeaders.path(of: head.uri)) }
        }
        // Sampled or not, as the full stack decides (the span ends when the exchange is recorded).
        if let tracer = loopState.tracer {
            exchange.trace(head, tracer: tracer, loopState: loopState, direction: direction, info: &info)
        }
        // The head's last use here: the router may change it in place (``Router``).
        let decision = router(consume head, &info, loopState)
        if exchange.log != nil, let last = info.lastDecision {
            exchange.log?.decision = last.code
            exchange.log?.policy = last.policy
        }
        switch decision {
        case .deny(let code, let requestID):
            exchange.log?.requestID = requestID
            exchange.denied = true
            respond(.forbidden, text: "access denied by policy (request id \(requestID))",
                    fields: "\(ProxyHeaders.decision): \(code)\r\n\(ProxyHeaders.requestID): \(requestID)\r\n", context: context)
        case .respond(let status, let code, let message):
            respond(status, text: message, fields: Self.errorField(status, code: code), context: context)
        case .forward(let candidates, var forwardHead, let subset, let matchedRoute):
            exchange.subset = subset
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
                route.budget.request(now: exchange.start)
                exchange.enterPending()
            }
            // Sent again only where the full stack would.
            replayable = method.isIdempotent || exchange.settings?.retryNonIdempotent == true
            if direction == .inbound, exchange.topPath != nil {
                exchange.topPath?.path = ProxyHeaders.path(of: forwardHead.uri)
            }
            if exchange.log != nil, direction == .inbound {
                // What is logged is what was authorized and forwarded: the normalized path.
                exchange.log?.path = String(ProxyHeaders.path(of: forwardHead.uri).prefix(1024))
            }
            request = Self.serialize(forwardHead, body: body, allocator: context.channel.allocator)
            exchange.requestBytes = body?.readableBytes ?? 0
            replayed = false
            loopState.inFlight += 1
            phase = .connecting
            connect(candidates[...], loopState: loopState)
        }
    }

    /// The request as it goes upstream: always HTTP/1.1, the router's fields in its order,
    /// then the body, in one buffer (one write, one TLS record).
    private static func serialize(_ head: HTTPRequestHead, body: ByteBuffer?, allocator: ByteBufferAllocator) -> ByteBuffer {
        let method = head.method.rawValue
        // Room for the usual head without walking its fields twice (a field costs a retain and
        // release of both strings per walk); a larger one is written again with more room.
        let size = method.utf8.count + head.uri.utf8.count + 13 + 64 * head.headers.count
        var out = allocator.buffer(capacity: size + (body?.readableBytes ?? 0))
        out.writeHead(capacity: size) { out in
            out.append(string: method)
            out.append(" ")
            out.append(string: head.uri)
            out.append(" HTTP/1.1\r\n")
            for (name, value) in head.headers {
                out.append(string: name)
                out.append(": ")
                out.append(string: value)
                out.append("\r\n")
            }
            out.append("\r\n")
        }
        if let body { out.writeImmutableBuffer(body) }
        return out
    }

    // MARK: - Upstream

    private func connect(_ candidates: ArraySlice<UpstreamKey>, loopState: LoopState, fresh: Bool = false) {
        guard let key = candidates.first else { return }
        exchange.lastKey = key
        if let stats = exchange.route?.stats(for: key), exchange.endpoint !== stats {
            exchange.endpoint?.inFlight -= 1
            stats.inFlight += 1
            exchange.endpoint = stats
        }
        if !fresh, let upstream = loopState.pool.takeIdleExpress(key) {
            connected(.success(upstream), key: key, candidates: candidates, loopState: loopState)
            return
        }
        let (serial, attempt) = (self.serial, exchange.attempt)
        loopState.pool.acquireExpress(key, clientTLS: loopState.clientTLS, bundle: loopState.bundle).whenComplete { [self] result in
            guard self.serial == serial, exchange.attempt == attempt else {
                if case .success(let upstream) = result { loopState.pool.releaseExpress(upstream) }
                return
            }
            connected(result, key: key, candidates: candidates, loopState: loopState)
        }
    }

    private func connected(_ result: Result<ExpressUpstream, Error>, key: UpstreamKey, candidates: ArraySlice<UpstreamKey>,
                           loopState: LoopState) {
        guard case .connecting = phase, let context else {
            if case .success(let upstream) = result { loopState.pool.releaseExpress(upstream) }
            return
        }
        switch result {
        case .success(let upstream):
            exchange.leavePending()
            phase = .forwarding(upstream, responseStarted: false)
            exchange.upstreamStart = Exchange.now()
            upstream.responder = self
            upstream.requestWasHead = headRequest
            upstream.wantsTiming = direction == .outbound
            upstream.channel.write(request, promise: nil)
            if inRead {
                if let other = upstreamUnflushed, other !== upstream.channel { other.flush() }
                upstreamUnflushed = upstream.channel
            } else {
                upstream.channel.flush()
            }
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
                connect(candidates.dropFirst(), loopState: loopState)
                return
            }
            if exchange.settings?.retryOnConnectFailure == true, retry("connect-failure") { return }
            logger.warning("upstream unavailable", metadata: ["role": "\(role)", "upstream": "\(key.address)", "error": "\(error)"])
            finishExchange()
            let status: HTTPResponseStatus = key.peerIdentity == nil ? .badGateway : .serviceUnavailable
            respond(status, text: "cannot reach \(key.peerIdentity?.description ?? "the local app") at \(key.address): \(error)",
                    fields: Self.errorField(status, code: "upstream-unavailable"), context: context)
        }
    }

    /// Sends the request again after a jittered backoff, to another endpoint when there is
    /// one, if the policy has attempts left and the retry budget has room (as the full
    /// stack's `retry` does). Returns false when it does not retry.
    private func retry(_ reason: String) -> Bool {
        guard let route = exchange.route, let loopState, context != nil else { return false }
        let policy = route.settings(route: exchange.matchedRoute)
        guard exchange.attempt <= policy.retryAttempts else { return false }
        guard route.budget.withdraw(now: Exchange.now(), percent: policy.budgetPercent, minPerSecond: policy.budgetMinPerSecond) else {
            loopState.countResilience("retry", destination: route.service, reason: "budget-exhausted")
            return false
        }
        loopState.countResilience("retry", destination: route.service, reason: reason)
        exchange.settleEndpoint(failed: true, logger: logger)
        exchange.attempt += 1
        exchange.upstreamStart = 0
        exchange.responseHead = 0
        exchange.status = 0
        exchange.peer = nil
        exchange.responseBytes = 0
        phase = .connecting
        exchange.enterPending()
        let ceiling = min(policy.backoffMaxSeconds, policy.backoffBaseSeconds * pow2(exchange.attempt - 2))
        let delay = Double(loopState.random.below(1_000_000)) / 1_000_000 * ceiling
        let (serial, attempt, avoiding) = (self.serial, exchange.attempt, exchange.lastKey)
        loopState.pool.eventLoop.scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) { [self] in
            guard self.serial == serial, exchange.attempt == attempt, case .connecting = phase, let loop = self.loopState,
                  let context = self.context else { return }
            let candidates = route.pick(now: Exchange.now(), random: &loop.random, avoiding: avoiding, subset: exchange.subset)
            guard !candidates.isEmpty else {
                finishExchange()
                respond(.serviceUnavailable, text: "service '\(route.service)' has no endpoints left to retry on",
                        fields: Self.errorField(.serviceUnavailable, code: "no-endpoints"), context: context)
                return
            }
            connect(candidates[...], loopState: loop)
        }
        return true
    }

    private func pow2(_ exponent: Int) -> Double {
        exponent <= 0 ? 1 : Double(1 << min(exponent, 30))
    }

    // MARK: - Responses (called by ExpressUpstream)

    /// `bytes`: what was read, from the head on; `inlineBody`: how many bytes of body after
    /// the head to send with it, in the same write (the whole body, when small and read).
    func responseHead(_ parsed: ExpressResponseHead.Parsed, bytes: UnsafeRawBufferPointer, inlineBody: Int) {
        guard case .forwarding(let upstream, _) = phase, let context else { return }
        if idleTimeout != nil { lastActivity = Exchange.now() }
        exchange.responseHead = Exchange.now()
        exchange.status = parsed.status
        var timing: HopTiming?
        switch direction {
        case .inbound:
            if info.peer != nil {
                timing = HopTiming(appNanos: exchange.responseHead &- exchange.upstreamStart,
                                   proxyNanos: exchange.upstreamStart &- exchange.start)
            }
        case .outbound:
            if let value = parsed.timing { exchange.peer = HopTiming(headerValue: UnsafeRawBufferPointer(rebasing: bytes[value])) }
        }
        framing = parsed.framing
        let body = UnsafeRawBufferPointer(rebasing: bytes[parsed.length..<(parsed.length + inlineBody)])
        exchange.responseBytes += inlineBody
        var out = context.channel.allocator.buffer(capacity: ExpressResponseHead.maxWrittenBytes(parsed) + inlineBody)
        ExpressResponseHead.write(bytes, parsed, timing: timing, close: !keepAlive, body: body, into: &out)
        phase = .forwarding(upstream, responseStarted: true)
        context.write(wrapOutboundOut(out), promise: nil)
        downstreamUnflushed = true
    }

    /// `dataBytes`: how much of `chunk` is body (not chunk framing), as the metrics count it.
    func responseBody(_ chunk: ByteBuffer, dataBytes: Int) {
        guard let context, chunk.readableBytes > 0 else { return }
        if idleTimeout != nil { lastActivity = Exchange.now() }
        exchange.responseBytes += dataBytes
        if framing == .untilClose {
            // Sent on chunked (the caller's connection outlives the upstream's).
            var size = context.channel.allocator.buffer(capacity: 12)
            size.writeString(String(chunk.readableBytes, radix: 16))
            size.writeStaticString("\r\n")
            context.write(wrapOutboundOut(size), promise: nil)
            context.write(wrapOutboundOut(chunk), promise: nil)
            context.write(wrapOutboundOut(ByteBuffer(staticString: "\r\n")), promise: nil)
        } else {
            context.write(wrapOutboundOut(chunk), promise: nil)
        }
        downstreamUnflushed = true
    }

    func responseEnd(reusable: Bool) {
        guard case .forwarding(let upstream, _) = phase, let context else { return }
        if framing == .untilClose { context.write(wrapOutboundOut(ByteBuffer(staticString: "0\r\n\r\n")), promise: nil) }
        if readingUpstreamPaused {
            readingUpstreamPaused = false
            setAutoRead(true, upstream.channel)
        }
        if reusable {
            loopState?.pool.releaseExpress(upstream)
        } else {
            upstream.channel.close(promise: nil)
        }
        recordExchange()
        finishExchange()
        phase = .idle
        endResponse(context)
    }

    func upstreamReadComplete() {
        guard downstreamUnflushed, let context else { return }
        downstreamUnflushed = false
        context.flush()
    }

    /// The upstream closed before its response ended.
    func upstreamClosed() {
        upstreamFailed(code: "upstream-reset", message: "the upstream closed the connection before answering")
    }

    /// The upstream's response cannot be passed on (`ExpressUpstream` closed the connection):
    /// handled as a close, with its own reason. A 101 nobody asked for is answered at once.
    func responseInvalid(_ reason: String, code: String = "bad-response") {
        logger.warning("upstream sent a response that cannot be passed on", metadata: ["role": "\(role)", "reason": "\(reason)"])
        if code == "bad-response" {
            upstreamFailed(code: code, message: "the upstream's response cannot be passed on: \(reason)")
        } else {
            abandon(code: code, message: reason)
        }
    }

    /// The upstream connection failed before the response ended: before it started, the
    /// request is sent again where the full stack would (a reused pooled connection once, then
    /// the policy's retries on reset); else ``abandon(code:message:)``.
    private func upstreamFailed(code: String, message: String) {
        guard case .forwarding(let upstream, let started) = phase, let loopState else { return }
        if !started, upstream.uses > 1, !replayed, replayable {
            // A pooled connection the peer closed just as it was reused: the one failure a
            // proxy must hide. Once, on a new connection.
            replayed = true
            phase = .connecting
            connect([upstream.key], loopState: loopState, fresh: true)
            return
        }
        if !started, replayable, exchange.settings?.retryOnReset == true, retry("reset") { return }
        abandon(code: code, message: message)
    }

    /// Ends a forwarded exchange that failed: the caller gets a 502 with `code`, or — once
    /// the response has started — its connection closes (nothing else can be said), the
    /// exchange counted as failed (status 0).
    private func abandon(code: String, message: String) {
        guard case .forwarding(_, let started) = phase, let context else { return }
        finishExchange()
        if started {
            exchange.status = 0
            recordExchange()
            phase = .idle
            context.close(promise: nil)
        } else {
            respond(.badGateway, text: message, fields: Self.errorField(.badGateway, code: code), context: context)
        }
    }

    // MARK: - Flow

    private var readingUpstreamPaused = false

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure: the upstream is not read while the caller cannot take more.
        if case .forwarding(let upstream, _) = phase {
            readingUpstreamPaused = !context.channel.isWritable
            setAutoRead(context.channel.isWritable, upstream.channel)
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        if case .fellBack = phase {} else { headerTimer?.stop() }
        pending = nil
        switch phase {
        case .forwarding(let upstream, _):
            upstream.responder = nil
            upstream.channel.close(promise: nil)
            // The caller gave up: a failed exchange (status 0), not the endpoint's failure.
            exchange.releaseEndpoint()
            exchange.status = 0
            recordExchange()
            finishExchange()
        case .connecting:
            exchange.releaseEndpoint()
            exchange.status = 0
            recordExchange()
            finishExchange()
        case .idle, .fellBack, .closing:
            break
        }
        if case .fellBack = phase {} else { phase = .closing }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("downstream connection error", metadata: ["role": "\(role)", "error": "\(error)"])
        context.close(promise: nil)
    }

    /// The response is written whole: flush, close if the caller asked to, else go on with
    /// the next held request.
    private func endResponse(_ context: ChannelHandlerContext) {
        downstreamUnflushed = false
        headerTimer?.awaitNextRequest()
        guard keepAlive else {
            pending = nil
            phase = .closing
            context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.flush()
        takeNext(context)
    }

    /// Every answer the proxy gives itself: counted, plain text, as the full stack words it.
    private func respond(_ status: HTTPResponseStatus, text: String, fields: String, context: ChannelHandlerContext) {
        exchange.status = Int(status.code)
        exchange.responseHead = Exchange.now()
        recordExchange()
        phase = .idle
        let body = "swiftmesh \(role): \(text)\n"
        var out = context.channel.allocator.buffer(capacity: body.utf8.count + fields.utf8.count + 128)
        out.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: text/plain; charset=utf-8\r\n")
        out.writeString("content-length: \(body.utf8.count)\r\n")
        out.writeString(fields)
        if !keepAlive { out.writeStaticString("connection: close\r\n") }
        out.writeStaticString("\r\n")
        if !headRequest { out.writeString(body) }
        context.write(wrapOutboundOut(out), promise: nil)
        endResponse(context)
    }

    private static func errorField(_ status: HTTPResponseStatus, code: String) -> String {
        "\(ProxyHeaders.error): \(code)\r\n" + (status == .tooManyRequests ? "retry-after: 1\r\n" : "")
    }

    // MARK: - Bookkeeping (as ProxyHTTPHandler's)

    private func recordExchange() {
        exchange.leavePending()
        if exchange.edge == nil, direction == .outbound, let loopState {
            exchange.edge = loopState.edge(.init(direction: .outbound, peer: nil, tls: true))
        }
        exchange.record(accessLog: nil)
        exchange.settleEndpoint(failed: exchange.status >= 500 || exchange.status == 0, logger: logger)
        if let top = exchange.topPath, let loopState {
            loopState.topPaths.add(method: top.method, path: top.path, status: exchange.status,
                                   latencyMs: Double(exchange.duration) / 1e6)
        }
    }

    private func finishExchange() {
        loopState?.inFlight -= 1
        exchange.settleEndpoint(failed: true, logger: logger)
    }

    private func pauseReading(_ context: ChannelHandlerContext) {
        guard !readingPaused else { return }
        readingPaused = true
        setAutoRead(false, context.channel)
    }

    private func resumeReading(_ context: ChannelHandlerContext) {
        guard readingPaused else { return }
        readingPaused = false
        setAutoRead(true, context.channel)
    }

    private func setAutoRead(_ on: Bool, _ channel: Channel) {
        if let options = channel.syncOptions {
            try? options.setOption(ChannelOptions.autoRead, value: on)
        }
        if on { channel.read() }
    }

    /// Closes the connection after `idleTimeout` without a read or a write (lazily moved on,
    /// as ``DownstreamFlow``'s timer).
    private func scheduleIdleCheck(in delay: TimeAmount, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: delay) {
            let handler = bound.value
            guard let context = handler.context, let timeout = handler.idleTimeout else { return }
            let idle = Int64(Exchange.now() &- handler.lastActivity)
            if idle >= timeout.nanoseconds {
                context.close(promise: nil)
            } else {
                handler.scheduleIdleCheck(in: .nanoseconds(timeout.nanoseconds - idle), context: context)
            }
        }
    }
}
