import MeshCore
import MeshTelemetry
import NIOCore
import NIOHTTP1
import Prometheus
import Tracing

/// The metric handles of one edge on one event loop: the shared series plus the request
/// counters per status code, cached here so that a request costs one dictionary lookup.
final class EdgeHandles {
    let labels: EdgeLabels
    /// The Prometheus series; nil when request metrics are off (`metrics: false`).
    let metrics: ProxyMetrics?
    let edge: EdgeMetrics?
    private var requestsByStatus: [Int: Counter] = [:]
    /// The same traffic as plain cumulative counters, reported to the control plane for
    /// `mesh stat` and `mesh edges` (the Prometheus types do not expose their values).
    var counters: EdgeCounters
    /// The opaque TCP stream series of this edge, made the first time a stream uses it.
    lazy var opaque: OpaqueStreamMetrics? = metrics?.opaqueStreams(labels)

    init(labels: EdgeLabels, metrics: ProxyMetrics?) {
        self.labels = labels
        self.metrics = metrics
        self.edge = metrics?.edge(labels)
        counters = EdgeCounters(direction: labels.direction.rawValue, source: labels.sourceService,
                                destination: labels.destinationService, tls: labels.tls)
    }

    func requests(status: Int) -> Counter? {
        if let counter = requestsByStatus[status] { return counter }
        guard let metrics else { return nil }
        let counter = metrics.requests(labels, status: status)
        requestsByStatus[status] = counter
        return counter
    }
}

/// One request/response exchange as the proxy times and counts it. Times are monotonic
/// nanoseconds (`NIODeadline.now()`), cheap enough to take three per request.
struct Exchange {
    var start: UInt64
    /// When the request went out to the upstream (0: it never did).
    var upstreamStart: UInt64 = 0
    var responseHead: UInt64 = 0
    var status = 0
    /// Refused by the inbound policy check.
    var denied = false
    var requestBytes = 0
    var responseBytes = 0
    var edge: EdgeHandles?
    /// The peer proxy's report (outbound only): its own time and the app's.
    var peer: HopTiming?
    /// What the access log needs beyond the metrics; nil when access logging is off.
    var log: LogContext?
    /// This hop's span; nil when tracing is off or the request is not sampled.
    var span: (any Span)?
    /// A new unsampled trace's `traceparent`, sent on instead of the caller's (if any).
    var unsampledParent: String?
    /// Outbound: the destination's route and the endpoint serving the request, told how it
    /// went for the balancer's latency estimate and outlier detection.
    var route: ServiceRoute?
    var endpoint: EndpointStats?
    /// Set while the request waits for a connection (counted in the route's `pending`).
    var pendingOn: ServiceRoute?
    /// The instance labels a route or split chose; retries stay within them.
    var subset: [String: String]?
    /// Which of the route's `routes` the request matched (nil: none, or no route).
    var matchedRoute: Int?
    /// The timeouts and retries that apply: the matched route's, else the service's; nil
    /// without a route. Read from the route where it is needed rather than kept here:
    /// `Effective` holds five collections, and a copy per exchange retained and released
    /// each of them (~700 instructions a request).
    var settings: TrafficPolicy.Effective? { route?.settings(route: matchedRoute) }
    /// 1 for the first try; retries count up.
    var attempt = 1
    /// The endpoint of the current (or last) attempt; a retry goes elsewhere if it can.
    var lastKey: UpstreamKey?
    /// Inbound: method and path for `mesh top` (the normalized path once routed).
    var topPath: (method: String, path: Substring)?

    /// Request details kept only for the access log.
    struct LogContext {
        var method: String
        var path: String
        var traceID: String?
        var sourceAddress: String?
        var requestID: String?
        var decision: String?
        var policy: String?
    }

    init(start: UInt64) { self.start = start }

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// The exchange's duration up to the response head (or now, without one), in nanoseconds.
    var duration: UInt64 { (responseHead > 0 ? responseHead : Self.now()) &- start }

    /// Counts and times the finished exchange, and writes its access log line.
    ///
    /// `mutating` although it changes nothing: called on the handler's stored exchange, a
    /// non-mutating method gets a copy of it, and copying retains every reference it holds.
    mutating func record(accessLog: AccessLog?) {
        guard let edge else { return }
        if let accessLog, let log { accessLog.write(entry(edge.labels, log).encoded()) }
        if let span { end(span, edge.labels) }
        let total = duration
        let split = hopSplit()
        edge.counters.add(status: status, latencyMs: Double(total) / 1e6, denied: denied, hopsMs: nil)
        if let split {
            edge.counters.addHops(callerProxy: Double(split.callerProxy) / 1e6, network: Double(split.network) / 1e6,
                                  peerProxy: Double(split.peerProxy) / 1e6, app: Double(split.app) / 1e6)
        }
        guard let series = edge.edge else { return }
        edge.requests(status: status)?.increment()
        series.latency.record(Double(total) / 1e9)
        if requestBytes > 0 { series.requestBytes.increment(by: Int64(requestBytes)) }
        if responseBytes > 0 { series.responseBytes.increment(by: Int64(responseBytes)) }
        guard let split, series.hops.count == 4 else { return }
        series.hops[0].record(Double(split.callerProxy) / 1e9)
        series.hops[1].record(Double(split.network) / 1e9)
        series.hops[2].record(Double(split.peerProxy) / 1e9)
        series.hops[3].record(Double(split.app) / 1e9)
    }

    /// Names the span after the call (`GET api`), records who called whom and the outcome,
    /// and ends it.
    private func end(_ span: any Span, _ labels: EdgeLabels) {
        span.operationName = "\(log?.method ?? "HTTP") \(labels.destinationService)"
        let status = self.status
        let peer = self.peer
        span.updateAttributes { attributes in
            attributes["mesh.direction"] = labels.direction.rawValue
            attributes["mesh.source.service"] = labels.sourceService
            attributes["mesh.source.identity"] = labels.sourceIdentity
            attributes["mesh.destination.service"] = labels.destinationService
            attributes["mesh.destination.identity"] = labels.destinationIdentity
            attributes["mesh.tls"] = labels.tls
            attributes["http.response.status_code"] = status
            if let log {
                attributes["http.request.method"] = log.method
                attributes["url.path"] = log.path
                if let decision = log.decision { attributes["mesh.policy.decision"] = decision }
                if let policy = log.policy { attributes["mesh.policy.name"] = policy }
            }
            if let peer {
                attributes["mesh.peer_proxy.duration_us"] = Int(peer.proxyNanos / 1000)
                attributes["mesh.app.duration_us"] = Int(peer.appNanos / 1000)
            }
        }
        if status >= 500 || status == 0 { span.setStatus(.init(code: .error, message: "HTTP \(status)")) }
        span.end()
    }

    private func entry(_ labels: EdgeLabels, _ log: LogContext) -> AccessLogEntry {
        var entry = AccessLogEntry(direction: labels.direction.rawValue, sourceService: labels.sourceService,
                                   sourceIdentity: labels.sourceIdentity, destinationService: labels.destinationService,
                                   destinationIdentity: labels.destinationIdentity, method: log.method, path: log.path,
                                   status: status, tls: labels.tls, durationNanos: duration)
        entry.traceID = log.traceID
        entry.requestID = log.requestID
        entry.sourceAddress = log.sourceAddress
        entry.decision = log.decision
        entry.policy = log.policy
        entry.requestBytes = requestBytes
        entry.responseBytes = responseBytes
        if let split = hopSplit() {
            entry.hops = zip(["caller_proxy", "network", "peer_proxy", "app"], split.nanos).map { ($0, $1) }
        } else if labels.direction == .inbound, upstreamStart > 0, responseHead >= upstreamStart {
            entry.hops = [("proxy", upstreamStart &- start), ("app", responseHead - upstreamStart)]
        }
        return entry
    }

    /// The trace id of a request from its W3C `traceparent` header, or from B3 as the
    /// tracer sees it (``B3/traceparent(from:)``: 16-digit ids padded to 32); nil when absent
    /// or malformed.
    static func traceID(of headers: HTTPHeaders) -> String? {
        guard let parent = headers.first(name: "traceparent") ?? B3.traceparent(from: headers) else { return nil }
        let parts = parent.split(separator: "-")
        guard parts.count >= 4, parts[1].count == 32,
              parts[1].utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }),
              parts[1].contains(where: { $0 != "0" }) else { return nil }
        return String(parts[1])
    }

    /// caller-proxy, network, peer-proxy, app (as ``ProxyMetrics/Hop/allCases``), in
    /// nanoseconds; nil when the exchange did not reach a peer that reported its timing.
    func hopSplit() -> HopSplit? {
        guard let peer, upstreamStart > 0, responseHead >= upstreamStart, upstreamStart >= start else { return nil }
        let upstream = responseHead - upstreamStart
        let app = min(peer.appNanos, upstream)
        let peerProxy = min(peer.proxyNanos, upstream - app)
        return HopSplit(callerProxy: upstreamStart - start, network: upstream - app - peerProxy, peerProxy: peerProxy, app: app)
    }
}

/// Where the caller's proxy saw an exchange's time go, in nanoseconds (the hops of
/// ``ProxyMetrics/Hop``). Four fields rather than an array: it is made for every response
/// from a peer, and an array is an allocation.
struct HopSplit: Equatable {
    var callerProxy: UInt64
    var network: UInt64
    var peerProxy: UInt64
    var app: UInt64

    /// In ``ProxyMetrics/Hop/allCases`` order.
    var nanos: [UInt64] { [callerProxy, network, peerProxy, app] }
}

/// The inbound proxy's report of where its part of a request's time went, sent back to the
/// calling proxy in a response header (`x-mesh-timing: app=1234,proxy=56`, microseconds),
/// which that proxy removes before the calling app sees the response.
struct HopTiming: Equatable {
    var appNanos: UInt64
    var proxyNanos: UInt64

    static let header = "x-mesh-timing"

    var headerValue: String { "app=\(appNanos / 1000),proxy=\(proxyNanos / 1000)" }

    /// Writes the whole field line, `x-mesh-timing: <headerValue>` CRLF, into a response head
    /// (the express path's inbound side, on every response to a mesh caller): the digits go
    /// straight into the head, without the strings `headerValue` makes (1.7k instructions).
    /// At most ``maxFieldBytes``.
    func writeField(into out: inout HeadWriter) {
        out.append("x-mesh-timing: app=")
        out.appendDecimal(appNanos / 1000)
        out.append(",proxy=")
        out.appendDecimal(proxyNanos / 1000)
        out.append("\r\n")
    }

    /// The longest field ``writeField(into:)`` writes (two 20-digit numbers).
    static let maxFieldBytes = 68

    /// Parses a header value; nil for anything malformed or absurd (over an hour). Reads the
    /// bytes in one pass: the outbound proxy parses one on every response from a peer.
    init?(headerValue: String) {
        var value = headerValue
        guard let parsed = value.withUTF8({ HopTiming(headerValue: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = parsed
    }

    /// The same, from the value's bytes where they were read (the express path's head).
    init?(headerValue bytes: UnsafeRawBufferPointer) {
        var app: UInt64?
        var proxy: UInt64?
        guard bytes.count <= 64 else { return nil }
        var index = 0
        func skipSpaces() { while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 } }
        while index < bytes.count {
            skipSpaces()
            let keyStart = index
            while index < bytes.count, bytes[index] != UInt8(ascii: "="), bytes[index] != UInt8(ascii: ",") { index += 1 }
            var keyEnd = index
            while keyEnd > keyStart, bytes[keyEnd - 1] == 0x20 || bytes[keyEnd - 1] == 0x09 { keyEnd -= 1 }
            guard index < bytes.count, bytes[index] == UInt8(ascii: "=") else { return nil }
            index += 1
            skipSpaces()
            var micros: UInt64 = 0
            var digits = 0
            while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                micros = micros * 10 + UInt64(bytes[index] - 0x30)
                digits += 1
                guard digits <= 10 else { return nil }
                index += 1
            }
            skipSpaces()
            guard digits > 0, micros <= 3_600_000_000, index == bytes.count || bytes[index] == UInt8(ascii: ",") else { return nil }
            index += 1
            // Byte by byte: a generic `elementsEqual` against a string's UTF-8 view cost
            // hundreds of instructions per response.
            let length = keyEnd - keyStart
            if length == 3, bytes[keyStart] == UInt8(ascii: "a"), bytes[keyStart + 1] == UInt8(ascii: "p"),
               bytes[keyStart + 2] == UInt8(ascii: "p") {
                app = micros * 1000
            } else if length == 5, bytes[keyStart] == UInt8(ascii: "p"), bytes[keyStart + 1] == UInt8(ascii: "r"),
                      bytes[keyStart + 2] == UInt8(ascii: "o"), bytes[keyStart + 3] == UInt8(ascii: "x"),
                      bytes[keyStart + 4] == UInt8(ascii: "y") {
                proxy = micros * 1000
            }
        }
        guard let app, let proxy else { return nil }
        self.appNanos = app
        self.proxyNanos = proxy
    }

    init(appNanos: UInt64, proxyNanos: UInt64) {
        self.appNanos = appNanos
        self.proxyNanos = proxyNanos
    }
}
