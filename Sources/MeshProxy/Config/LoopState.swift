import MeshCore
import MeshIdentity
import NIOCore
import NIOSSL
import MeshPolicy
import MeshTelemetry
import Prometheus

/// Everything the data path reads per request, confined to one event loop.
///
/// Handlers on that loop read it without locks; the control side replaces whole values by
/// submitting a closure to the loop (``LoopStates/update(_:)``), so a request always sees one
/// consistent configuration and never waits for the control plane.
final class LoopState {
    let eventLoop: EventLoop
    /// The registry as last pushed; replaced whole on every update (``setRegistry(_:)``).
    private(set) var registry = RegistrySnapshot()
    /// Per-service routing data, derived from the registry once per update rather than once
    /// per request: the peer identity to demand and the upstream keys in a stable order.
    private(set) var routes: [ServiceName: ServiceRoute] = [:]
    /// The compiled policies, replaced together with the registry.
    private(set) var evaluator = PolicyEvaluator(policies: [])
    /// Whether any policy for this workload looks at headers (then they are collected).
    private(set) var policiesUseHeaders = false
    /// Whether any policy for this workload needs method, path or headers; if not, the
    /// decision is made once per connection.
    private(set) var policiesNeedL7 = false
    /// Whether a policy for this workload expires; then no decision is cached, so that
    /// time-bound access lapses by itself on open connections too.
    private(set) var policiesExpire = false
    /// The proxy's metrics; counters are cached per loop so that counting is one atomic add.
    var metrics: ProxyMetrics? {
        didSet {
            pool.onConnection = { [weak self] channel in self?.connectionOpened(.outbound, peer: "dst", channel) }
            pool.onHandshakeFailure = { [weak self] reason in self?.handshakeFailed(.outbound, reason) }
            if metrics != nil && tcpSampling == nil {
                tcpSampling = eventLoop.scheduleRepeatedTask(initialDelay: Self.tcpSampleInterval, delay: Self.tcpSampleInterval) { [weak self] _ in
                    self?.sampleTCPPaths()
                }
            }
        }
    }
    /// How often the kernel's TCP_INFO of connections to peers is read into the metrics.
    static let tcpSampleInterval = TimeAmount.seconds(2)
    private var tcpSampling: RepeatedTask?
    private var tcpPaths: [ServiceName: (rtt: Gauge, rttVariance: Gauge, retransmits: Counter)] = [:]

    /// Averages RTT and its variance over the open connections to each destination and adds
    /// their new retransmissions.
    private func sampleTCPPaths() {
        guard let metrics else { return }
        // A destination with no open connection left reads 0, not its last RTT forever.
        for handles in tcpPaths.values {
            handles.rtt.set(Double(0))
            handles.rttVariance.set(Double(0))
        }
        var sums: [ServiceName: (rtt: UInt64, variance: UInt64, count: UInt64)] = [:]
        pool.sampleTCPInfo { [self] sample in
            let handles = tcpPaths[sample.destination] ?? metrics.tcpPath(destination: metrics.serviceLabel(sample.destination.rawValue))
            tcpPaths[sample.destination] = handles
            if sample.retransmits > 0 { handles.retransmits.increment(by: Int64(sample.retransmits)) }
            var sum = sums[sample.destination] ?? (0, 0, 0)
            sum.rtt += UInt64(sample.rttMicros)
            sum.variance += UInt64(sample.rttVarianceMicros)
            sum.count += 1
            sums[sample.destination] = sum
            handles.rtt.set(Double(sum.rtt) / Double(sum.count) / 1e6)
            handles.rttVariance.set(Double(sum.variance) / Double(sum.count) / 1e6)
        }
    }
    private struct ConnectionKey: Hashable {
        var direction: ProxyMetrics.Direction
        var peer: String
    }
    private var connectionMetrics: [ConnectionKey: (open: Gauge, total: Counter)] = [:]
    private struct FailureKey: Hashable {
        var direction: ProxyMetrics.Direction
        var reason: TLSFailureReason
    }
    private var handshakeFailures: [FailureKey: Counter] = [:]

    /// Counts a TCP connection (`peer`: `src` accepted, `dst` made) until it closes.
    /// Connections accepted by this loop's listeners, closed at the end of a drain.
    private var downstreams: [ObjectIdentifier: Channel] = [:]

    func connectionOpened(_ direction: ProxyMetrics.Direction, peer: String, _ channel: Channel) {
        if peer == "src" {
            let id = ObjectIdentifier(channel)
            downstreams[id] = channel
            channel.closeFuture.whenComplete { [weak self] _ in
                self?.eventLoop.execute { self?.downstreams[id] = nil }
            }
        }
        guard let metrics else { return }
        let key = ConnectionKey(direction: direction, peer: peer)
        let handles = connectionMetrics[key] ?? metrics.connections(direction: direction, peer: peer)
        connectionMetrics[key] = handles
        handles.total.increment()
        handles.open.increment()
        let open = handles.open
        channel.closeFuture.whenComplete { _ in open.decrement() }
    }

    func handshakeFailed(_ direction: ProxyMetrics.Direction, _ reason: TLSFailureReason) {
        guard let metrics else { return }
        let key = FailureKey(direction: direction, reason: reason)
        let counter = handshakeFailures[key] ?? metrics.tlsHandshakeFailures(direction: direction, reason: reason)
        handshakeFailures[key] = counter
        counter.increment()
    }
    private struct DecisionKey: Hashable {
        var policy: String?
        var action: String
        var code: String
    }
    private var decisionCounters: [DecisionKey: Counter] = [:]
    /// The counter of the last decision: most requests get the decision of the one before,
    /// and comparing three short strings costs less than hashing them.
    private var lastDecision: (key: DecisionKey, counter: Counter)?

    func countDecision(policy: String?, action: String, code: String) {
        guard let metrics else { return }
        let key = DecisionKey(policy: policy, action: action, code: code)
        if let last = lastDecision, last.key == key { last.counter.increment(); return }
        let counter: Counter
        if let known = decisionCounters[key] {
            counter = known
        } else {
            counter = metrics.decisionCounter(policy: policy, action: action, code: code)
            decisionCounters[key] = counter
        }
        lastDecision = (key, counter)
        counter.increment()
    }

    /// The other end of an edge as the data path knows it: the caller (inbound) or the
    /// destination (outbound); nil when unknown (a plaintext caller, an unroutable request).
    struct EdgeKey: Hashable {
        var direction: ProxyMetrics.Direction
        var peer: ServiceName?
        var tls: Bool
    }
    private var edges: [EdgeKey: EdgeHandles] = [:]
    /// The edge looked up last in each direction (handles are never dropped from `edges`):
    /// consecutive requests nearly always share their edge.
    private var lastInboundEdge: (key: EdgeKey, handles: EdgeHandles)?
    private var lastOutboundEdge: (key: EdgeKey, handles: EdgeHandles)?

    /// The inbound side's busiest paths since the last traffic report (`mesh top`).
    var topPaths = TopPaths(capacity: 100)

    /// This loop's cumulative counters of every edge, for the traffic report.
    func edgeCounters() -> [EdgeCounters] {
        edges.values.map(\.counters)
    }

    /// The metric handles of one edge, made once and then found with one lookup.
    func edge(_ key: EdgeKey) -> EdgeHandles {
        let last = key.direction == .inbound ? lastInboundEdge : lastOutboundEdge
        if let last, last.key == key { return last.handles }
        let handles = lookUpEdge(key)
        if key.direction == .inbound { lastInboundEdge = (key, handles) } else { lastOutboundEdge = (key, handles) }
        return handles
    }

    private func lookUpEdge(_ key: EdgeKey) -> EdgeHandles {
        if let handles = edges[key] { return handles }
        // Peers are the mesh's services, but the table stays bounded whatever happens.
        if edges.count >= 4096 { return lookUpEdge(EdgeKey(direction: key.direction, peer: nil, tls: key.tls)) }
        let trustDomain = bundle?.trustDomain
        func identity(_ service: ServiceName?) -> String {
            guard let service, let trustDomain, let id = try? SPIFFEID(trustDomain: trustDomain, service: service) else {
                return key.tls ? "unknown" : "unauthenticated"
            }
            return id.description
        }
        let me = selfService
        let (source, destination) = key.direction == .inbound ? (key.peer, me) : (me, key.peer)
        func name(_ service: ServiceName?) -> String {
            metrics?.serviceLabel(service?.rawValue) ?? service?.rawValue ?? "unknown"
        }
        let labels = EdgeLabels(direction: key.direction, sourceService: name(source),
                                sourceIdentity: source == nil ? (key.tls ? "unknown" : "unauthenticated") : identity(source),
                                destinationService: name(destination),
                                destinationIdentity: destination == nil ? "unknown" : identity(destination), tls: key.tls)
        let handles = EdgeHandles(labels: labels, metrics: metrics)
        edges[key] = handles
        return handles
    }

    private var resilienceCounters: [String: Counter] = [:]

    /// Counts a retry (or a retry the budget refused) or a timeout toward `destination`.
    func countResilience(_ kind: String, destination: ServiceName, reason: String) {
        guard let metrics else { return }
        let key = "\(kind)|\(destination)|\(reason)"
        if let counter = resilienceCounters[key] {
            counter.increment()
            return
        }
        let name = metrics.serviceLabel(destination.rawValue)
        let counter = kind == "retry" ? metrics.retries(destination: name, reason: reason) : metrics.timeouts(destination: name, kind: reason)
        if resilienceCounters.count < 4096 { resilienceCounters[key] = counter }
        counter.increment()
    }

    /// Where denials go to be reported to the control plane (bounded; newest kept).
    var denialSink: DenialBuffer?
    /// The access log (`--access-log`); nil when off, which costs the data path nothing.
    var accessLog: AccessLog?
    /// The tracer (`--trace-endpoint`); nil when off.
    var tracer: MeshTracer?
    /// Sampling dice, ids of unsampled traces, the balancer's choices.
    var random = FastRandom()
    /// Sampling for `mesh tap`; nil while no tap of this service is open.
    private(set) var tap: TapSampler?

    /// Installs the taps the control plane sent (all of them; none ends tapping).
    func setTaps(_ orders: [TapOrder], loops: Int) {
        let now = Exchange.now()
        if orders.isEmpty {
            tap = nil
        } else if let tap {
            tap.update(orders: orders, loops: loops, now: now)
        } else {
            tap = TapSampler(orders: orders, loops: loops, now: now)
        }
    }
    /// This workload: the destination of every inbound request.
    var selfService: ServiceName?
    /// Labels and mTLS mode from the proxy's own flags; central ServiceDefaults override them.
    var localLabels: [String: String] = [:] { didSet { applyServiceDefaults() } }
    var localMTLSMode = InboundListener.MTLSMode.strict { didSet { applyServiceDefaults() } }
    /// This workload's labels as policies see them (flags overridden by ServiceDefaults).
    private(set) var selfLabels: [String: String] = [:]
    /// The inbound mode in force: read when a connection is accepted, and per request so that
    /// plaintext connections opened while permissive are refused once the mode is strict.
    private(set) var mtlsMode = InboundListener.MTLSMode.strict
    /// `Host` header values already resolved to a service (bounded; cleared when full).
    private var hostCache: [String: ServiceName] = [:]
    /// The last `Host` resolved on this loop and its route then. Nearly every request names
    /// the Host of the one before, and comparing two short strings costs less than hashing
    /// one: resolving took four dictionary lookups per express request (the express check and
    /// the router, each a Host and a route). Stale once the routes change (`generation`).
    private var lastHost: (host: String, service: ServiceName, route: ServiceRoute?, generation: UInt64)?
    /// TLS contexts built from the current SVID: new connections pick up a renewed
    /// certificate, existing ones keep the one they were made with.
    var serverTLS: NIOSSLContext?
    var clientTLS: NIOSSLContext?
    /// The client context of opaque TCP streams (ALPN ``MeshTLS/ALPN/opaque``).
    var clientOpaqueTLS: NIOSSLContext?
    /// The client context of HTTP/2 connections to peers (ALPN `h2`).
    var clientH2TLS: NIOSSLContext?
    var bundle: TrustBundle?
    let pool: UpstreamPool
    /// This service's own TrafficPolicy (its rate limits apply here, on the inbound side).
    private(set) var selfTraffic = TrafficPolicy.Effective()
    let rateLimiter = RateLimiter()
    /// The idle timeout of connections to this service: its TrafficPolicy's `timeouts.idle`,
    /// else the proxy's limit.
    func inboundIdleTimeout(_ limits: ProxyLimits) -> TimeAmount {
        Self.idleTimeout(selfTraffic, limits)
    }

    static func idleTimeout(_ policy: TrafficPolicy.Effective, _ limits: ProxyLimits) -> TimeAmount {
        policy.idleTimeoutSeconds > 0 ? .nanoseconds(Int64(policy.idleTimeoutSeconds * 1e9)) : limits.idleTimeout
    }

    /// Number of loops of the proxy (rates are shared among them).
    var loopCount = 1

    /// What this loop learnt about each endpoint (latency, failures), kept across registry
    /// updates while the endpoint stays.
    private var endpointStats: [UpstreamKey: EndpointStats] = [:]
    /// Requests being forwarded right now, for graceful shutdown.
    var inFlight = 0
    /// Open opaque streams of the inbound side, authorized again when the policies change.
    private var openStreams: [ObjectIdentifier: OpenStream] = [:]
    /// While a policy of this workload expires: the streams are checked every second.
    private var streamRecheck: RepeatedTask?

    /// Keeps `stream` until its channel closes, for ``recheckStreams()``.
    func track(_ stream: OpenStream) {
        let id = ObjectIdentifier(stream.channel)
        openStreams[id] = stream
        stream.channel.closeFuture.whenComplete { [weak self] _ in
            self?.eventLoop.execute { self?.openStreams[id] = nil }
        }
    }

    /// Closes every connection the listeners accepted (shutdown, once nothing is in flight).
    func closeDownstreams() {
        for channel in downstreams.values { channel.close(promise: nil) }
        downstreams.removeAll()
    }

    /// Closes every open stream that its current policy no longer allows.
    func recheckStreams() {
        for (id, stream) in openStreams where !stream.stillAllowed(stream) {
            openStreams[id] = nil
            stream.channel.close(promise: nil)
        }
    }

    init(eventLoop: EventLoop, limits: ProxyLimits) {
        self.eventLoop = eventLoop
        self.pool = UpstreamPool(eventLoop: eventLoop, limits: limits)
    }

    /// Goes up on every registry update, whatever the control plane's version numbers do;
    /// cached per-connection decisions and the last Host's route are keyed on it.
    private(set) var generation: UInt64 = 0

    /// The service a `Host` header value names (`api`, `api:8080`, `API.`) and its route (nil
    /// while it has none); nil when the value names no valid service.
    func resolve(host: String) -> (service: ServiceName, route: ServiceRoute?)? {
        if let last = lastHost, last.generation == generation, last.host == host { return (last.service, last.route) }
        let service: ServiceName
        if let cached = hostCache[host] {
            service = cached
        } else {
            guard let parsed = try? ServiceName(OutboundListener.serviceName(fromHost: host)) else { return nil }
            if hostCache.count >= 1024 { hostCache.removeAll(keepingCapacity: true) }
            hostCache[host] = parsed
            service = parsed
        }
        let route = routes[service]
        lastHost = (host, service, route, generation)
        return (service, route)
    }

    /// Installs a new registry and rebuilds the routes. Needs the trust bundle (set when the
    /// SVID is installed, which always happens first) for the peers' trust domain.
    func setRegistry(_ snapshot: RegistrySnapshot, evaluator: PolicyEvaluator? = nil) {
        registry = snapshot
        generation &+= 1
        applyServiceDefaults()
        if let evaluator {
            // Only the policies that select this workload are kept: with a thousand policies
            // in the mesh, a request here is checked against its own few.
            let mine = evaluator.policies.filter { policy in
                selfService.map { policy.target.matches(service: $0, labels: selfLabels) } ?? true
            }
            self.evaluator = PolicyEvaluator(policies: mine, defaultMode: evaluator.defaultMode)
            policiesNeedL7 = mine.contains { $0.needsL7 }
            policiesExpire = mine.contains { $0.expires != nil }
            policiesUseHeaders = mine.contains { $0.rules.contains { $0.to.contains { !$0.headers.isEmpty } } }
        }
        var routes: [ServiceName: ServiceRoute] = [:]
        var kept: [UpstreamKey: EndpointStats] = [:]
        let trustDomain = bundle?.trustDomain
        for service in snapshot.services {
            guard let trustDomain, let identity = try? SPIFFEID(trustDomain: trustDomain, service: service) else { continue }
            // An instance whose own proxy finds its app unhealthy gets no traffic.
            let instances = snapshot.endpoints(of: service).filter(\.servesTraffic)
            let keys = instances.map { UpstreamKey(address: $0.endpoint, peerIdentity: identity) }
            let labels = instances.map { snapshot.policies.effectiveLabels(of: service, own: $0.labels.values) }
            let stats = keys.map { key in
                let stats = kept[key] ?? endpointStats[key] ?? EndpointStats()
                kept[key] = stats
                return stats
            }
            routes[service] = ServiceRoute(service: service, keys: keys, stats: stats, labels: labels,
                                           policy: snapshot.policies.traffic(for: service),
                                           counters: self.routes[service]?.counters ?? RouteCounters(),
                                           opaque: instances.contains(where: \.isOpaque))
        }
        endpointStats = kept
        self.routes = routes
        recheckStreams()
        if policiesExpire, streamRecheck == nil {
            streamRecheck = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
                self?.recheckStreams()
            }
        } else if !policiesExpire {
            streamRecheck?.cancel()
            streamRecheck = nil
        }
    }

    private func applyServiceDefaults() {
        guard let selfService else {
            selfLabels = localLabels
            mtlsMode = localMTLSMode
            return
        }
        selfLabels = registry.policies.effectiveLabels(of: selfService, own: localLabels)
        let traffic = registry.policies.traffic(for: selfService)
        if traffic.rateLimits != selfTraffic.rateLimits { rateLimiter.reset() }
        selfTraffic = traffic
        mtlsMode = registry.policies.defaults(for: selfService)?.mtls.flatMap(InboundListener.MTLSMode.init(rawValue:)) ?? localMTLSMode
    }
}

/// One ``LoopState`` per event loop of the proxy's group.
final class LoopStates: Sendable {
    /// Sendable because `value` is only touched on `eventLoop` (asserted in debug builds).
    private struct Entry: @unchecked Sendable {
        let eventLoop: EventLoop
        private let state: LoopState
        init(eventLoop: EventLoop, state: LoopState) {
            self.eventLoop = eventLoop
            self.state = state
        }
        var value: LoopState {
            eventLoop.assertInEventLoop()
            return state
        }
        /// For set-up before the loops run anything.
        var unsafeState: LoopState { state }
    }
    private let states: [Entry]
    /// Number of event loops (a tap's rate is shared among them).
    var count: Int { states.count }

    init(group: EventLoopGroup, limits: ProxyLimits) {
        states = group.makeIterator().map { Entry(eventLoop: $0, state: LoopState(eventLoop: $0, limits: limits)) }
        let count = states.count
        // Not yet shared with any other thread: set before the loops get work.
        for entry in states { entry.unsafeState.loopCount = count }
    }

    /// The state of `loop`; call on that loop.
    func state(on loop: EventLoop) -> LoopState {
        for entry in states where entry.eventLoop === loop { return entry.value }
        preconditionFailure("event loop \(loop) is not part of this proxy's group")
    }

    /// Applies `change` to every loop's state, on its own loop; returns once all have applied it.
    func update(_ change: @escaping @Sendable (LoopState) -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            for state in states {
                group.addTask {
                    try? await state.eventLoop.submit { change(state.value) }.get()
                }
            }
        }
    }

    /// Every loop's values of a per-loop list, concatenated.
    func gather<T: Sendable>(_ values: @escaping @Sendable (LoopState) -> [T]) async -> [T] {
        var all: [T] = []
        for state in states {
            all += (try? await state.eventLoop.submit { values(state.value) }.get()) ?? []
        }
        return all
    }

    /// Sum of a per-loop figure, e.g. requests in flight.
    func sum(_ figure: @escaping @Sendable (LoopState) -> Int) async -> Int {
        var total = 0
        for state in states {
            total += (try? await state.eventLoop.submit { figure(state.value) }.get()) ?? 0
        }
        return total
    }
}

/// Limits on buffers, queues and time in the data path (DESIGN.md §6).
public struct ProxyLimits: Sendable {
    public var maxRequestHeaderBytes = 60 * 1024
    public var maxRequestHeaderFields = 100
    /// Request body bytes buffered while the upstream connection is being set up.
    public var maxPendingBodyBytes = 1 << 20
    public var tlsHandshakeTimeout: TimeAmount = .seconds(10)
    /// From the first byte of a request to the end of its headers.
    public var requestHeaderTimeout: TimeAmount = .seconds(10)
    public var connectTimeout: TimeAmount = .seconds(5)
    public var idleTimeout: TimeAmount = .hours(1)
    /// How long an upstream listener waits for the app's first bytes to tell HTTP from
    /// opaque TCP; silence that long means a server-first protocol (then: opaque).
    public var detectTimeout: TimeAmount = .seconds(1)
    /// Idle pooled connections kept per upstream.
    public var maxIdlePerUpstream = 64
    /// HTTP/1.1 requests to peer proxies ride multiplexed HTTP/2 connections (one per peer
    /// and event loop, as Linkerd does); false (the default) keeps a pool of HTTP/1.1
    /// connections per peer. HTTP/2 requests always go as HTTP/2. Off by default because it
    /// measured about a third slower per request on swift-nio-http2 (bench/results), a cost
    /// that the fewer connections and handshakes do not pay back at this scale.
    public var http1OverHTTP2 = false
    public var drainTimeout: Duration = .seconds(10)
    public init() {}
}
