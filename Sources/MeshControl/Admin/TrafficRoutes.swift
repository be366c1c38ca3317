import MeshCore
import MeshIdentity
import MeshTransport

/// The traffic questions of the operator API: `mesh stat`, `mesh edges`, `mesh top` and the
/// dashboard's charts, answered from the proxies' reports in ``TrafficStore``.
extension AdminRoutes {
    /// `?window=SECONDS`, 10 s to `limit` (5 min unless said), 60 s unless said.
    func window(_ request: APIRequest, default fallback: Double = 60, limit: Double = 300) throws -> Double {
        guard let text = request.query["window"] else { return fallback }
        guard let seconds = Double(text), (10...limit).contains(seconds) else {
            throw MeshError(.invalidRequest, "window must be 10 to \(Int(limit)) seconds")
        }
        return seconds
    }

    /// A service's golden metrics per history step (the dashboard's charts).
    func series(service: String, window: Double) async throws -> [SeriesPoint] {
        guard let name = try? ServiceName(service), await registry.current.services.contains(name) else {
            throw MeshError(.notFound, "no service named '\(service)' is known; give ?service=NAME")
        }
        return await traffic.series(service: name.rawValue, seconds: window)
    }

    /// Per service, its inbound traffic: what its callers got.
    func stat(window: Double, service: String?) async throws -> [ServiceStat] {
        let snapshot = await registry.current
        let edges = await traffic.window(seconds: window)
        let names = service.map { [$0] } ?? snapshot.services.map(\.rawValue).sorted()
        if let service, !snapshot.services.contains(where: { $0.rawValue == service }) {
            throw MeshError(.notFound, "no service named '\(service)' is known")
        }
        return names.map { name in
            var total = EdgeCounters(direction: "inbound", source: "*", destination: name, tls: true)
            var perSecond = 0.0
            var mtlsRequests: UInt64 = 0
            for edge in edges where edge.counters.direction == "inbound" && edge.counters.destination == name {
                total.merge(edge.counters)
                perSecond += edge.perSecond
                if edge.counters.tls { mtlsRequests += edge.counters.requests }
            }
            let requests = Double(total.requests)
            let instances = (try? ServiceName(name)).map { snapshot.endpoints(of: $0).count } ?? 0
            return ServiceStat(service: name, instances: instances,
                               successRate: requests > 0 ? 1 - Double(total.failures) / requests : nil,
                               requestsPerSecond: perSecond, p50Ms: total.latencyQuantileMs(0.5), p95Ms: total.latencyQuantileMs(0.95),
                               p99Ms: total.latencyQuantileMs(0.99), mtlsShare: requests > 0 ? Double(mtlsRequests) / requests : nil,
                               denials: total.denials, windowSeconds: window)
        }
    }

    /// A service's busiest paths (its proxies' inbound view), at most 50.
    func top(service: String, window: Double) async throws -> [PathStat] {
        let snapshot = await registry.current
        guard let name = try? ServiceName(service), snapshot.services.contains(name) else {
            throw MeshError(.notFound, "no service named '\(service)' is known; give ?service=NAME")
        }
        let instances = Set(snapshot.endpoints(of: name).map(\.id))
        return await traffic.topPaths(instances: instances, seconds: window).prefix(50).map { entry in
            let requests = Double(entry.counters.requests)
            return PathStat(method: entry.counters.method, path: entry.counters.path, requestsPerSecond: entry.perSecond,
                            successRate: requests > 0 ? 1 - Double(entry.counters.failures) / requests : nil,
                            p50Ms: entry.counters.latencyQuantileMs(0.5), p99Ms: entry.counters.latencyQuantileMs(0.99))
        }
    }

    /// Who calls whom: mesh callers as their own proxies saw the calls (with the hop
    /// attribution), the callee's policy denials, and plaintext callers as the callee saw them.
    func edges(window: Double) async throws -> [EdgeStat] {
        let all = await traffic.window(seconds: window)
        func identity(_ service: String) -> String {
            (try? ServiceName(service)).flatMap { try? SPIFFEID(trustDomain: trustDomain, service: $0).description } ?? "unauthenticated"
        }
        var denials: [String: UInt64] = [:]
        for edge in all where edge.counters.direction == "inbound" {
            denials["\(edge.counters.source)>\(edge.counters.destination)", default: 0] += edge.counters.denials
        }
        var rows: [EdgeStat] = []
        let hopNames = ["caller-proxy", "network", "peer-proxy", "app"]
        for edge in all {
            let counters = edge.counters
            let callerSide = counters.direction == "outbound"
            // Each mesh call is seen twice; the caller's view is the one with the whole path.
            guard callerSide || !counters.tls else { continue }
            let requests = Double(counters.requests)
            let hops = counters.hopSamples > 0
                ? Dictionary(uniqueKeysWithValues: zip(hopNames, counters.hopSumsMs.map { $0 / Double(counters.hopSamples) })) : nil
            rows.append(EdgeStat(
                source: callerSide ? counters.source : "unauthenticated", destination: counters.destination,
                sourceIdentity: callerSide ? identity(counters.source) : "unauthenticated",
                destinationIdentity: identity(counters.destination), mtls: counters.tls, requestsPerSecond: edge.perSecond,
                failures: counters.failures, successRate: requests > 0 ? 1 - Double(counters.failures) / requests : nil,
                p50Ms: counters.latencyQuantileMs(0.5), p99Ms: counters.latencyQuantileMs(0.99),
                denials: callerSide ? denials["\(counters.source)>\(counters.destination)"] ?? 0 : counters.denials,
                hopsMs: hops, windowSeconds: window))
        }
        return rows.sorted { ($0.source, $0.destination) < ($1.source, $1.destination) }
    }
}
