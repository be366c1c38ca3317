import Prometheus

/// The proxy's metrics, in one swift-prometheus registry exposed at `GET /metrics` on the
/// admin port. Label values are bounded: decision codes and actions are fixed sets, and
/// policy names are those of the mesh's own resources (capped, then `other`).
public final class ProxyMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let knownPolicies = PolicyNameCap(limit: 1000)

    public init() {}

    /// The counter for one policy decision; callers cache it (creating one takes a lock in
    /// the registry, incrementing it does not).
    public func decisionCounter(policy: String?, action: String, code: String) -> Counter {
        registry.makeCounter(name: "mesh_policy_decisions_total",
                             labels: [("policy", knownPolicies.label(for: policy)), ("action", action), ("code", code)],
                             help: "Authorization decisions of the inbound proxy, by policy (none: the default), action and decision code.")
    }

    /// The counter of requests a proxy answered or forwarded, by direction and status class.
    public func requestCounter(direction: String, statusClass: String) -> Counter {
        registry.makeCounter(name: "mesh_requests_total", labels: [("direction", direction), ("status_class", statusClass)],
                             help: "Requests answered by the proxy, by direction (inbound, outbound) and HTTP status class.")
    }

    /// Prometheus text exposition of everything registered.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}

/// Keeps the number of distinct policy label values bounded.
final class PolicyNameCap: Sendable {
    private let names = LockedSet()
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func label(for policy: String?) -> String {
        guard let policy else { return "none" }
        return names.insertIfRoom(policy, limit: limit) ? policy : "other"
    }
}

import Synchronization

final class LockedSet: Sendable {
    private let storage = Mutex<Set<String>>([])

    func insertIfRoom(_ value: String, limit: Int) -> Bool {
        storage.withLock { set in
            if set.contains(value) { return true }
            guard set.count < limit else { return false }
            set.insert(value)
            return true
        }
    }
}
