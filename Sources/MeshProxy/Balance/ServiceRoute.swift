import Logging
import MeshCore
import NIOHTTP1

/// Where requests for one service go, and how the next endpoint is chosen: power of two
/// choices over peak-EWMA latency weighted by requests in flight (the default, as Linkerd),
/// least requests, or round robin, as the service's `TrafficPolicy` says; endpoints that
/// failed `consecutiveFailures` times in a row are ejected for a while (outlier detection),
/// never more than `maxEjectedPercent` of them.
final class ServiceRoute {
    let service: ServiceName
    /// One per endpoint, each naming the SPIFFE ID the peer must prove.
    let keys: [UpstreamKey]
    let stats: [EndpointStats]
    /// Each endpoint's instance labels (central ones included), for routes and splits.
    let labels: [[String: String]]
    let policy: TrafficPolicy.Effective
    /// The service's instances declare `appProtocol: tcp`: connections to it are relayed
    /// opaquely at once, without waiting to see whether the caller speaks HTTP.
    let opaque: Bool
    /// Requests to the service may take the HTTP/1.1 express path (``ExpressHandler``): its
    /// TrafficPolicy asks for nothing that only the full stack does — timeouts, retries on
    /// status codes, header routes, fault delays.
    let admitsExpress: Bool
    /// Carried over when the route is rebuilt on a registry update.
    let counters: RouteCounters
    var budget: RetryBudget { counters.budget }
    /// Requests waiting for a connection to this service (circuit breaking).
    var pending: Int {
        get { counters.pending }
        set { counters.pending = newValue }
    }
    private var nextRoundRobin: Int {
        get { counters.nextRoundRobin }
        set { counters.nextRoundRobin = newValue }
    }
    private let index: [UpstreamKey: Int]

    init(service: ServiceName, keys: [UpstreamKey], stats: [EndpointStats], labels: [[String: String]] = [],
         policy: TrafficPolicy.Effective, counters: RouteCounters = RouteCounters(), opaque: Bool = false) {
        self.service = service
        self.opaque = opaque
        admitsExpress = policy.requestTimeoutSeconds == 0 && policy.perTryTimeoutSeconds == 0 && policy.retryStatuses.isEmpty
            && policy.routes.isEmpty && policy.faultDelayPercent == 0
        self.keys = keys
        self.stats = stats
        self.labels = labels.count == keys.count ? labels : Array(repeating: [:], count: keys.count)
        self.policy = policy
        self.counters = counters
        index = Dictionary(keys.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
    }

    func stats(for key: UpstreamKey) -> EndpointStats? {
        index[key].map { stats[$0] }
    }

    /// Up to three endpoints to try in order: the chosen one, then others for a failed connect.
    /// A retry passes the endpoint that just failed as `avoiding`: it goes last. No allocation
    /// but the result in the common case (the random choices are usable).
    func pick(now: UInt64, random: inout FastRandom, avoiding: UpstreamKey? = nil, subset: [String: String]? = nil) -> [UpstreamKey] {
        let maxRequests = policy.maxRequestsPerEndpoint
        // A canary's subset is never left, not even when all of it is failing.
        func hasRoom(_ i: Int) -> Bool {
            (maxRequests == 0 || stats[i].inFlight < maxRequests) && (subset.map { inSubset(i, $0) } ?? true)
        }
        func usable(_ i: Int) -> Bool { hasRoom(i) && !stats[i].isEjected(now: now) && keys[i] != avoiding }
        // Every endpoint ejected (more than the share allowed, e.g. all of them failing), or
        // only the one to avoid left: better to try them than to refuse the request — but
        // never past the circuit breaker.
        // A retry takes an endpoint without moving the round-robin rotation on.
        let advance = avoiding == nil
        guard let first = choose(usable, now: now, random: &random, advance: advance)
            ?? choose(hasRoom, now: now, random: &random, advance: advance) else { return [] }
        var candidates = [keys[first]]
        var offset = 1
        while candidates.count < 3, offset < keys.count {
            let next = (first + offset) % keys.count
            if usable(next) { candidates.append(keys[next]) }
            offset += 1
        }
        return candidates
    }

    private func inSubset(_ endpoint: Int, _ wanted: [String: String]) -> Bool {
        wanted.allSatisfy { labels[endpoint][$0.key] == $0.value }
    }

    /// The subset a request goes to: the first route whose match it meets, else a weighted
    /// draw among the split's subsets; nil for every endpoint. `route`: the index of the
    /// route that matched (its own timeouts and retries, ``settings(route:)``).
    func subset(for head: HTTPRequestHead, random: inout FastRandom) -> (labels: [String: String]?, route: Int?) {
        if !policy.routes.isEmpty {
            let path = ProxyHeaders.path(of: head.uri)
            for (index, route) in policy.routes.enumerated() {
                if let prefix = route.match.pathPrefix, !path.hasPrefix(prefix) { continue }
                if let headers = route.match.headers, !headers.allSatisfy({ head.headers.first(name: $0.key) == $0.value }) { continue }
                // A route without `to` sets only timeouts or retries: the split still applies.
                if let labels = route.to { return (labels, index) }
                return (splitDraw(random: &random), index)
            }
        }
        return (splitDraw(random: &random), nil)
    }

    /// The timeouts and retries of a request that matched `route` (nil: none matched).
    func settings(route: Int?) -> TrafficPolicy.Effective {
        guard let route, route < policy.routeSettings.count, let settings = policy.routeSettings[route] else { return policy }
        return settings
    }

    private func splitDraw(random: inout FastRandom) -> [String: String]? {
        guard !policy.split.isEmpty else { return nil }
        var draw = random.below(policy.split.reduce(0) { $0 + $1.weight })
        for entry in policy.split {
            if draw < entry.weight { return entry.labels }
            draw -= entry.weight
        }
        return policy.split.last?.labels
    }

    /// The balancer's choice among the endpoints `eligible` admits, or nil if none.
    private func choose(_ eligible: (Int) -> Bool, now: UInt64, random: inout FastRandom, advance: Bool) -> Int? {
        let count = keys.count
        guard count > 0 else { return nil }
        switch policy.balancer {
        case .roundRobin:
            for step in 0..<count {
                let candidate = (nextRoundRobin + step) % count
                if eligible(candidate) {
                    if advance { nextRoundRobin = candidate + 1 }
                    return candidate
                }
            }
            return nil
        case .p2cEWMA, .leastRequest:
            if count == 1 { return eligible(0) ? 0 : nil }
            // Two distinct random endpoints; the less loaded wins.
            let a = random.below(count)
            var b = random.below(count - 1)
            if b >= a { b += 1 }
            switch (eligible(a), eligible(b)) {
            case (true, true): return load(a, now: now) <= load(b, now: now) ? a : b
            case (true, false) where count == 2: return a
            case (false, true) where count == 2: return b
            default: break
            }
            // Some are not eligible: draw the two among those that are (no list made).
            let usable = (0..<count).reduce(0) { eligible($1) ? $0 + 1 : $0 }
            guard usable > 0 else { return nil }
            func nth(_ n: Int) -> Int {
                var seen = 0
                for index in 0..<count where eligible(index) {
                    if seen == n { return index }
                    seen += 1
                }
                return 0
            }
            if usable == 1 { return nth(0) }
            let x = random.below(usable)
            var y = random.below(usable - 1)
            if y >= x { y += 1 }
            let (i, j) = (nth(x), nth(y))
            return load(i, now: now) <= load(j, now: now) ? i : j
        }
    }

    /// Why a new request must fail at once (circuit breaking), or nil.
    func overloaded() -> String? {
        if policy.maxPendingRequests > 0, pending >= policy.maxPendingRequests {
            return "\(pending) requests to \(service) are already waiting for a connection (circuitBreaker.maxPendingRequests)"
        }
        let maxRequests = policy.maxRequestsPerEndpoint
        if maxRequests > 0, !keys.isEmpty, stats.allSatisfy({ $0.inFlight >= maxRequests }) {
            return "every endpoint of \(service) has \(maxRequests) requests in flight (circuitBreaker.maxRequests)"
        }
        return nil
    }

    private func load(_ endpoint: Int, now: UInt64) -> Double {
        let endpointStats = stats[endpoint]
        let pending = Double(endpointStats.inFlight + 1)
        switch policy.balancer {
        case .leastRequest, .roundRobin: return pending
        // A microsecond floor keeps requests in flight counting for endpoints not timed yet.
        case .p2cEWMA: return (endpointStats.latency(now: now) + 1000) * pending
        }
    }

    /// Counts a finished exchange (or a failed connect: `latencyNanos` nil) for outlier
    /// detection and the latency estimate.
    func finished(_ endpoint: EndpointStats, failed: Bool, latencyNanos: UInt64?, now: UInt64, logger: Logger) {
        if let latencyNanos { endpoint.observe(latencyNanos: latencyNanos, now: now) }
        guard endpoint.record(failed: failed, threshold: policy.consecutiveFailures) else { return }
        let ejected = stats.filter { $0.isEjected(now: now) }.count
        let allowed = keys.count * policy.maxEjectedPercent / 100
        guard ejected < allowed, !endpoint.isEjected(now: now) else { return }
        endpoint.eject(now: now, baseSeconds: policy.baseEjectionSeconds)
        if let key = keys.first(where: { stats(for: $0) === endpoint }) {
            logger.notice("endpoint ejected after failures in a row (outlier detection)", metadata: [
                "service": "\(service)", "endpoint": "\(key.address)", "ejections": "\(endpoint.ejections)",
                "seconds": "\(min(policy.baseEjectionSeconds * Double(endpoint.ejections), 300))"])
        }
    }
}
