import MeshCore
import MeshTelemetry
import NIOCore
import NIOHTTP1
import Tracing

/// What the handler records of each exchange: metrics, access log, `mesh top` and `mesh tap`
/// samples, the balancer's outcome, the span, and the hop-timing header between proxies.
extension ProxyHTTPHandler {
    /// Counts, times, logs and traces the finished exchange.
    func recordExchange() {
        cancelTimers()
        exchange.leavePending()
        if exchange.edge == nil, direction == .outbound, let loopState {
            // Answered by this proxy before a destination was chosen.
            exchange.edge = loopState.edge(.init(direction: .outbound, peer: nil, tls: true))
        }
        exchange.record(accessLog: loopState?.accessLog)
        exchange.settleEndpoint(failed: exchange.status >= 500 || exchange.status == 0, logger: logger)
        if let top = exchange.topPath, let loopState {
            loopState.topPaths.add(method: top.method, path: top.path, status: exchange.status,
                                   latencyMs: Double(exchange.duration) / 1e6)
        }
        if let tap = loopState?.tap, let log = exchange.log, let labels = exchange.edge?.labels {
            let now = Exchange.now()
            let source = labels.direction == .inbound && !labels.tls ? "unauthenticated" : labels.sourceService
            if tap.isOn(now), tap.wants(source: source, destination: labels.destinationService, method: log.method, path: log.path) {
                tap.offer(now: now) { exchange.tapEvent(labels, log) }
            }
        }
    }

    func keepDetails(_ head: HTTPRequestHead) {
        exchange.keepDetails(head, direction: direction, info: &info)
    }

    func trace(_ head: HTTPRequestHead, tracer meshTracer: MeshTracer, loopState: LoopState) {
        exchange.trace(head, tracer: meshTracer, loopState: loopState, direction: direction, info: &info)
    }

    /// Inbound: replaces whatever timing header the app sent with this proxy's own report,
    /// for mesh callers only. Outbound: takes the peer's report off the response (the app
    /// never sees it) for the hop attribution.
    func exchangeTiming(_ headers: inout HTTPHeaders) {
        switch direction {
        case .inbound:
            headers.remove(name: HopTiming.header)
            guard info.peer != nil, exchange.upstreamStart > 0 else { return }
            let timing = HopTiming(appNanos: exchange.responseHead &- exchange.upstreamStart,
                                   proxyNanos: exchange.upstreamStart &- exchange.start)
            headers.add(name: HopTiming.header, value: timing.headerValue)
        case .outbound:
            guard let value = headers.first(name: HopTiming.header) else { return }
            exchange.peer = HopTiming(headerValue: value)
            headers.remove(name: HopTiming.header)
        }
    }
}

/// Shared by both HTTP/1.1 paths (``ProxyHTTPHandler``, ``ExpressHandler``): what a request
/// keeps of itself for the access log, `mesh tap` and its span.
extension Exchange {
    /// Keeps the request's details for the access log, a tap sample or a span.
    mutating func keepDetails(_ head: HTTPRequestHead, direction: ProxyMetrics.Direction, info: inout DownstreamInfo) {
        let target = ProxyHeaders.path(of: head.uri)
        log = Exchange.LogContext(
            method: head.method.rawValue, path: String(target.prefix(1024)), traceID: Exchange.traceID(of: head.headers),
            sourceAddress: direction == .inbound ? info.remoteAddress?.ipAddress : nil)
        info.lastDecision = nil
    }

    /// Decides whether this request is traced here, and starts this hop's span if so: a
    /// trusted caller's decision (W3C, or B3 turned into W3C) is kept; a new trace is sampled
    /// with the configured ratio. An unsampled request gets no span: its caller's context
    /// goes on unchanged, or a new unsampled one is sent on, so that the next hops agree.
    mutating func trace(_ head: HTTPRequestHead, tracer meshTracer: MeshTracer, loopState: LoopState,
                        direction: ProxyMetrics.Direction, info: inout DownstreamInfo) {
        // A plaintext caller from outside the mesh may not decide what is sampled (a forced
        // sampled flag would make the proxy trace everything): its context is ignored.
        let trusted = direction == .outbound || info.peer != nil
        var parent: String?
        var parentSampled = false
        if trusted {
            // A W3C context if well-formed, else B3's; each read once.
            if let value = head.headers.first(name: "traceparent"), let sampled = TraceParent.sampled(value) {
                (parent, parentSampled) = (value, sampled)
            } else if let value = B3.traceparent(from: head.headers), let sampled = TraceParent.sampled(value) {
                (parent, parentSampled) = (value, sampled)
            }
        }
        let tracer = meshTracer.tracer
        var context = ServiceContext.topLevel
        if let parent {
            guard parentSampled else { return }
            tracer.extract(HTTPHeaders([("traceparent", parent)] + head.headers["tracestate"].prefix(1).map { ("tracestate", $0) }),
                           into: &context, using: HTTPHeadersExtractor())
        } else if !loopState.random.chance(meshTracer.samplingRatio) {
            let fresh = loopState.random.unsampledParent()
            unsampledParent = fresh
            if log != nil { log?.traceID = TraceParent.traceID(of: fresh) }
            return
        }
        if log == nil { keepDetails(head, direction: direction, info: &info) }
        let newSpan = tracer.startSpan(head.method.rawValue, context: context, ofKind: direction == .inbound ? .server : .client)
        span = newSpan
        if parent == nil {
            // A new trace: the access log shows its id, not the untrusted caller's.
            var scratch = HTTPHeaders()
            tracer.inject(newSpan.context, into: &scratch, using: HTTPHeadersInjector())
            log?.traceID = Exchange.traceID(of: scratch)
        }
    }
}
