import Logging
import MeshCore

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
    let policy: TrafficPolicy.Effective
    /// Carried over when the route is rebuilt on a registry update.
    let budget: RetryBudget
    private let index: [UpstreamKey: Int]
    private var nextRoundRobin = 0
    /// Requests waiting for a connection to this service (circuit breaking).
    var pending = 0

    init(service: ServiceName, keys: [UpstreamKey], stats: [EndpointStats], policy: TrafficPolicy.Effective,
         budget: RetryBudget = RetryBudget()) {
        self.service = service
        self.keys = keys
        self.stats = stats
        self.policy = policy
        self.budget = budget
        index = Dictionary(keys.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
    }

    func stats(for key: UpstreamKey) -> EndpointStats? {
        index[key].map { stats[$0] }
    }

    /// Up to three endpoints to try in order: the chosen one, then others for a failed connect.
    /// A retry passes the endpoint that just failed as `avoiding`: it goes last.
    func pick(now: UInt64, random: inout FastRandom, avoiding: UpstreamKey? = nil) -> [UpstreamKey] {
        let maxRequests = policy.maxRequestsPerEndpoint
        var available = keys.indices.filter {
            !stats[$0].isEjected(now: now) && keys[$0] != avoiding && (maxRequests == 0 || stats[$0].inFlight < maxRequests)
        }
        if available.isEmpty, let avoiding, let index = index[avoiding], !stats[index].isEjected(now: now) { available = [index] }
        // Every endpoint ejected (more than the share allowed, e.g. all of them failing):
        // better to try them than to refuse every request — but not past the circuit breaker.
        if available.isEmpty { available = keys.indices.filter { maxRequests == 0 || stats[$0].inFlight < maxRequests } }
        guard !available.isEmpty else { return [] }
        let first: Int
        switch policy.balancer {
        case .roundRobin:
            first = available[nextRoundRobin % available.count]
            // A retry takes the next endpoint without moving the rotation on.
            if avoiding == nil { nextRoundRobin &+= 1 }
        case .p2cEWMA, .leastRequest:
            if available.count == 1 {
                first = available[0]
            } else {
                let a = random.below(available.count)
                var b = random.below(available.count - 1)
                if b >= a { b += 1 }
                let (x, y) = (available[a], available[b])
                first = load(x, now: now) <= load(y, now: now) ? x : y
            }
        }
        var candidates = [keys[first]]
        if let position = available.firstIndex(of: first) {
            for offset in 1..<min(3, available.count) {
                candidates.append(keys[available[(position + offset) % available.count]])
            }
        }
        return candidates
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
