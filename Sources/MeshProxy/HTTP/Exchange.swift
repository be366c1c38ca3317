import MeshTelemetry
import NIOCore
import NIOHTTP1
import Prometheus

/// The metric handles of one edge on one event loop: the shared series plus the request
/// counters per status code, cached here so that a request costs one dictionary lookup.
final class EdgeHandles {
    let metrics: ProxyMetrics
    let edge: EdgeMetrics
    private var requestsByStatus: [Int: Counter] = [:]

    init(metrics: ProxyMetrics, edge: EdgeMetrics) {
        self.metrics = metrics
        self.edge = edge
    }

    func requests(status: Int) -> Counter {
        if let counter = requestsByStatus[status] { return counter }
        let counter = metrics.requests(edge.labels, status: status)
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
    var requestBytes = 0
    var responseBytes = 0
    var edge: EdgeHandles?
    /// The peer proxy's report (outbound only): its own time and the app's.
    var peer: HopTiming?

    init(start: UInt64) { self.start = start }

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// Counts and times the finished exchange.
    func record() {
        guard let edge else { return }
        edge.requests(status: status).increment()
        let end = responseHead > 0 ? responseHead : Self.now()
        let total = end &- start
        edge.edge.latency.record(Double(total) / 1e9)
        if requestBytes > 0 { edge.edge.requestBytes.increment(by: Int64(requestBytes)) }
        if responseBytes > 0 { edge.edge.responseBytes.increment(by: Int64(responseBytes)) }
        guard let split = hopSplit() else { return }
        for (index, nanos) in split.enumerated() where index < edge.edge.hops.count {
            edge.edge.hops[index].record(Double(nanos) / 1e9)
        }
    }

    /// caller-proxy, network, peer-proxy, app (as ``ProxyMetrics/Hop/allCases``), in
    /// nanoseconds; nil when the exchange did not reach a peer that reported its timing.
    func hopSplit() -> [UInt64]? {
        guard let peer, upstreamStart > 0, responseHead >= upstreamStart, upstreamStart >= start else { return nil }
        let upstream = responseHead - upstreamStart
        let app = min(peer.appNanos, upstream)
        let peerProxy = min(peer.proxyNanos, upstream - app)
        return [upstreamStart - start, upstream - app - peerProxy, peerProxy, app]
    }
}

/// The inbound proxy's report of where its part of a request's time went, sent back to the
/// calling proxy in a response header (`x-mesh-timing: app=1234,proxy=56`, microseconds),
/// which that proxy removes before the calling app sees the response.
struct HopTiming: Equatable {
    var appNanos: UInt64
    var proxyNanos: UInt64

    static let header = "x-mesh-timing"

    var headerValue: String { "app=\(appNanos / 1000),proxy=\(proxyNanos / 1000)" }

    /// Parses a header value; nil for anything malformed or absurd (over an hour).
    init?(headerValue: String) {
        var app: UInt64?
        var proxy: UInt64?
        guard headerValue.utf8.count <= 64 else { return nil }
        for part in headerValue.split(separator: ",") {
            let pair = part.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, let micros = UInt64(pair[1].trimmingCharacters(in: .whitespaces)),
                  micros <= 3_600_000_000 else { return nil }
            switch pair[0].trimmingCharacters(in: .whitespaces) {
            case "app": app = micros * 1000
            case "proxy": proxy = micros * 1000
            default: continue
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
