import Prometheus
import Synchronization

/// The proxy's metrics, in one swift-prometheus registry exposed at `GET /metrics` on the
/// admin port.
///
/// A registry per proxy rather than swift-metrics' process-wide `MetricsSystem`: the demo
/// and the tests run several proxies in one process, and each must expose only its own
/// series. Label values are bounded: directions, hops, decision codes and status codes are
/// fixed sets, and service and policy names are those of the mesh (capped, then `other`).
public final class ProxyMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    /// The per-request latency histograms, recorded per event loop without a lock
    /// (``HistogramShard``) and rendered after the registry.
    private let sharded = ShardedHistograms()
    private let knownPolicies = NameCap(limit: 1000)
    private let knownServices = NameCap(limit: 1000)

    /// Histogram buckets in seconds (Prometheus' base unit, as promtool insists), at
    /// millisecond steps from 0.1 ms (a sidecar's own share) to 10 s.
    public static let latencyBuckets: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5, 1, 2.5, 5, 10]

    public init() {}

    private static func descriptor(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "mesh", metricName: name, unitName: unit, helpText: help)
    }

    /// The counter for one policy decision; callers cache it (creating one takes a lock in
    /// the registry, incrementing it does not).
    public func decisionCounter(policy: String?, action: String, code: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.descriptor("policy_decisions", "total",
                                        "Authorization decisions of the inbound proxy, by policy (none: the default), action and decision code."),
            labels: [("policy", policy.map(knownPolicies.label(for:)) ?? "none"), ("action", action), ("code", code)])
    }

    /// A service name as a label value: bounded, and `unknown` when there is none.
    public func serviceLabel(_ service: String?) -> String {
        service.map(knownServices.label(for:)) ?? "unknown"
    }

    /// Every series of one edge (direction, the two services, TLS or not) but the per-status
    /// request counters, which ``requests(_:status:)`` makes. Called once per edge and event
    /// loop: the latency histograms it returns are that loop's shards (``HistogramShard``).
    public func edge(_ labels: EdgeLabels) -> EdgeMetrics {
        let base = [("direction", labels.direction.rawValue), ("source_service", labels.sourceService),
                    ("destination_service", labels.destinationService)]
        // Only the caller's proxy attributes hops; inbound edges get no (empty) series.
        let hops = labels.direction == .inbound ? [] : Hop.allCases.map { hop in
            sharded.shard(name: "mesh_hop_latency_seconds",
                          help: "Where a mesh request's time went, by hop (caller-proxy, network, peer-proxy, app), recorded by the caller's proxy up to the response head.",
                          labels: [("source_service", labels.sourceService), ("destination_service", labels.destinationService),
                                   ("hop", hop.rawValue)],
                          buckets: Self.latencyBuckets)
        }
        return EdgeMetrics(
            labels: labels,
            latency: sharded.shard(name: "mesh_response_latency_seconds",
                                   help: "Time from the request head to the response head as this proxy saw it.",
                                   labels: base + [("tls", labels.tls ? "true" : "false")], buckets: Self.latencyBuckets),
            requestBytes: registry.makeCounter(
                descriptor: Self.descriptor("request_body_bytes", "total", "Request body bytes relayed."), labels: base),
            responseBytes: registry.makeCounter(
                descriptor: Self.descriptor("response_body_bytes", "total", "Response body bytes relayed."), labels: base),
            hops: hops)
    }

    /// The request counter of one edge and status code.
    public func requests(_ labels: EdgeLabels, status: Int) -> Counter {
        registry.makeCounter(
            descriptor: Self.descriptor("requests", "total",
                                        "Requests answered (by the upstream or by the proxy itself), by direction, source and destination, status code and whether the hop was mTLS."),
            labels: [("direction", labels.direction.rawValue),
                     ("source_service", labels.sourceService), ("source_identity", labels.sourceIdentity),
                     ("destination_service", labels.destinationService), ("destination_identity", labels.destinationIdentity),
                     ("status_code", (100...599).contains(status) ? String(status) : "other"),
                     ("tls", labels.tls ? "true" : "false")])
    }

    /// Open and total TCP connections: `peer=src` accepted from callers, `peer=dst` made
    /// to upstreams.
    public func connections(direction: Direction, peer: String) -> (open: Gauge, total: Counter) {
        let labels = [("direction", direction.rawValue), ("peer", peer)]
        return (registry.makeGauge(descriptor: Self.descriptor("tcp_connections_open", "", "TCP connections open now."), labels: labels),
                registry.makeCounter(descriptor: Self.descriptor("tcp_connections", "total", "TCP connections opened."), labels: labels))
    }

    /// The series of opaque TCP streams (raw TCP through the mesh) on one edge: streams by
    /// outcome (`opened`, `denied`, `connect-failed`), and bytes each way (`to-destination`:
    /// what the caller sent; `from-destination`: what came back). Callers cache it per edge.
    public func opaqueStreams(_ labels: EdgeLabels) -> OpaqueStreamMetrics {
        let base = [("direction", labels.direction.rawValue), ("source_service", labels.sourceService),
                    ("destination_service", labels.destinationService)]
        func streams(_ outcome: String) -> Counter {
            registry.makeCounter(descriptor: Self.descriptor("tcp_streams", "total",
                                                             "Opaque TCP streams through the proxy, by outcome (opened, denied, connect-failed)."),
                                 labels: base + [("outcome", outcome)])
        }
        func bytes(_ flow: String) -> Counter {
            registry.makeCounter(descriptor: Self.descriptor("tcp_stream_bytes", "total",
                                                             "Bytes relayed on opaque TCP streams, by flow (to-destination, from-destination)."),
                                 labels: base + [("flow", flow)])
        }
        return OpaqueStreamMetrics(opened: streams("opened"), denied: streams("denied"), connectFailed: streams("connect-failed"),
                                   open: registry.makeGauge(descriptor: Self.descriptor("tcp_streams_open", "", "Opaque TCP streams open now."),
                                                            labels: base),
                                   toDestination: bytes("to-destination"), fromDestination: bytes("from-destination"))
    }

    /// 1 while the sidecar's active health check finds its app healthy, 0 while not
    /// (`--health-check`; absent without one).
    public func appHealthy() -> Gauge {
        registry.makeGauge(descriptor: Self.descriptor("app_healthy", "",
                                                       "Whether the proxy's active health check finds its app healthy (1) or not (0)."),
                           labels: [])
    }

    /// How current the proxy's view of the control plane is, set at every scrape: 1 while
    /// stale (no registry stream, or no answer for three heartbeats), the seconds since the
    /// last answer, and the registry version in force.
    public func controlPlane() -> (stale: Gauge, contactAge: Gauge, registryVersion: Gauge) {
        (registry.makeGauge(descriptor: Self.descriptor("control_plane_stale", "",
                                                        "1 while the proxy serves on a stale view of the control plane (it keeps serving)."),
                            labels: []),
         registry.makeGauge(descriptor: Self.descriptor("control_plane_last_contact_age", "seconds",
                                                        "Seconds since the control plane last answered."), labels: []),
         registry.makeGauge(descriptor: Self.descriptor("registry_version", "",
                                                        "Version of the registry and policies in force."), labels: []))
    }

    /// When the proxy's SVID expires (Unix time, seconds).
    public func svidExpiry() -> Gauge {
        registry.makeGauge(descriptor: Self.descriptor("svid_expiry_timestamp", "seconds",
                                                       "When the proxy's current SVID expires (Unix time)."), labels: [])
    }

    /// TLS handshakes that failed, by direction and reason (``TLSFailureReason``).
    public func tlsHandshakeFailures(direction: Direction, reason: TLSFailureReason) -> Counter {
        registry.makeCounter(
            descriptor: Self.descriptor("tls_handshake_failures", "total",
                                        "TLS handshakes that failed, by direction and reason."),
            labels: [("direction", direction.rawValue), ("reason", reason.rawValue)])
    }

    /// Requests sent again by the caller's proxy, by destination and reason (`connect-failure`,
    /// `reset`, `status-503`, `per-try-timeout`), and retries refused by the budget.
    public func retries(destination: String, reason: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.descriptor("retries", "total",
                                        "Requests sent again by the caller's proxy (reason budget-exhausted: a retry the budget refused)."),
            labels: [("destination_service", destination), ("reason", reason)])
    }

    /// Requests that ran out of time in the caller's proxy, by destination and kind
    /// (`request-timeout`, `per-try-timeout`).
    public func timeouts(destination: String, kind: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.descriptor("timeouts", "total", "Requests or attempts that ran out of time in the caller's proxy."),
            labels: [("destination_service", destination), ("kind", kind)])
    }

    /// The kernel's view of the TCP path to one destination (Linux TCP_INFO of the
    /// connections to its proxies): smoothed RTT, its variance, and retransmitted segments.
    public func tcpPath(destination: String) -> (rtt: Gauge, rttVariance: Gauge, retransmits: Counter) {
        let labels = [("destination_service", destination)]
        return (registry.makeGauge(descriptor: Self.descriptor("tcp_rtt", "seconds",
                                                               "Smoothed round-trip time of the TCP connections to the destination's proxies, averaged over them (Linux TCP_INFO)."),
                                   labels: labels),
                registry.makeGauge(descriptor: Self.descriptor("tcp_rtt_variance", "seconds",
                                                               "Round-trip time variance (mean deviation) of those connections (TCP_INFO rttvar)."),
                                   labels: labels),
                registry.makeCounter(descriptor: Self.descriptor("tcp_retransmits", "total",
                                                                 "Segments retransmitted on connections to the destination's proxies: loss on the path, or a peer too slow to acknowledge."),
                                     labels: labels))
    }

    /// Access log lines dropped because the writer could not keep up.
    public func accessLogDropped() -> Counter {
        registry.makeCounter(descriptor: Self.descriptor("access_log_dropped_lines", "total",
                                                         "Access log lines dropped because the log's buffer was full or the write failed."),
                             labels: [])
    }

    /// Prometheus text exposition of everything registered.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        sharded.emit(into: &buffer)
        return buffer
    }

    /// Which listener a request or connection belongs to.
    public enum Direction: String, Sendable, Hashable {
        case inbound, outbound
    }

    /// The parts of a request's time, as the caller's proxy attributes them.
    public enum Hop: String, CaseIterable, Sendable {
        /// From the app's request head to the request leaving for the peer, plus relaying.
        case callerProxy = "caller-proxy"
        /// Both directions on the wire (and the kernels) between the two proxies.
        case network
        /// The peer proxy's own time: TLS, authorization, forwarding.
        case peerProxy = "peer-proxy"
        /// The destination app, from the request reaching it to its response head.
        case app
    }
}

/// The labels of one edge of the service graph, as one proxy sees it.
public struct EdgeLabels: Hashable, Sendable {
    public var direction: ProxyMetrics.Direction
    public var sourceService: String
    public var sourceIdentity: String
    public var destinationService: String
    public var destinationIdentity: String
    /// Whether the hop between the proxies was mTLS (plaintext only from non-mesh callers
    /// of a permissive service).
    public var tls: Bool

    public init(direction: ProxyMetrics.Direction, sourceService: String, sourceIdentity: String,
                destinationService: String, destinationIdentity: String, tls: Bool) {
        self.direction = direction
        self.sourceService = sourceService
        self.sourceIdentity = sourceIdentity
        self.destinationService = destinationService
        self.destinationIdentity = destinationIdentity
        self.tls = tls
    }
}

/// The series of one edge, as one event loop records them: one lookup per request, then
/// lock-free updates (the histograms are the loop's shards; the counters are atomic).
public final class EdgeMetrics: Sendable {
    public let labels: EdgeLabels
    public let latency: HistogramShard
    public let requestBytes: Counter
    public let responseBytes: Counter
    /// Indexed like ``ProxyMetrics/Hop/allCases``; empty on the inbound side.
    public let hops: [HistogramShard]

    init(labels: EdgeLabels, latency: HistogramShard, requestBytes: Counter, responseBytes: Counter, hops: [HistogramShard]) {
        self.labels = labels
        self.latency = latency
        self.requestBytes = requestBytes
        self.responseBytes = responseBytes
        self.hops = hops
    }
}

/// Why a TLS handshake failed, from the TLS library's error, in a bounded set.
public enum TLSFailureReason: String, Sendable {
    /// The peer's certificate was refused: not from the mesh CA, expired, wrong SPIFFE ID.
    case certificateRejected = "certificate-rejected"
    /// The other side refused ours (it sent an alert).
    case peerRejected = "peer-rejected"
    /// Not TLS at all (plaintext to a strict port).
    case notTLS = "not-tls"
    /// TLS older than 1.3, or no common cipher.
    case protocolVersion = "protocol-version"
    case timeout
    /// The connection closed before the handshake finished.
    case closed
    case other

    /// Classifies an error from swift-nio-ssl by the BoringSSL reason in its description.
    public init(describing error: any Error) {
        let text = String(describing: error).uppercased()
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("CERTIFICATE VERIFY") {
            self = .certificateRejected
        } else if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") || text.contains("RECORD_TOO_LARGE") {
            self = .notTLS
        } else if text.contains("UNSUPPORTED_PROTOCOL") || text.contains("NO_SHARED_CIPHER") || text.contains("PROTOCOL_VERSION") {
            self = .protocolVersion
        } else if text.contains("ALERT") {
            self = .peerRejected
        } else if text.contains("EOF") || text.contains("UNCLEANSHUTDOWN") || text.contains("CLOSED") {
            self = .closed
        } else {
            self = .other
        }
    }
}

/// Keeps the number of distinct label values of one kind bounded.
final class NameCap: Sendable {
    private let names = Mutex<Set<String>>([])
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func label(for name: String) -> String {
        names.withLock { set in
            if set.contains(name) { return name }
            guard set.count < limit else { return "other" }
            set.insert(name)
            return name
        }
    }
}

/// The series of opaque TCP streams on one edge (``ProxyMetrics/opaqueStreams(_:)``).
public struct OpaqueStreamMetrics: Sendable {
    public let opened: Counter
    public let denied: Counter
    public let connectFailed: Counter
    public let open: Gauge
    public let toDestination: Counter
    public let fromDestination: Counter
}
