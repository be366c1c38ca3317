import struct Foundation.Date

/// What a proxy reports to the control plane every few seconds for `mesh stat` and
/// `mesh edges`: cumulative counters per edge since the proxy started. The control plane
/// takes differences between reports, so a lost report costs resolution, not accuracy.
public struct TrafficReport: Codable, Sendable, Equatable {
    public var instanceID: String
    public var at: Date
    public var edges: [EdgeCounters]
    /// The inbound side's busiest paths since the previous report (not cumulative).
    public var paths: [PathCounters]
    public init(instanceID: String, at: Date, edges: [EdgeCounters], paths: [PathCounters] = []) {
        self.instanceID = instanceID
        self.at = at
        self.edges = edges
        self.paths = paths
    }

    private enum Key: String, CodingKey { case instanceID, at, edges, paths }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        instanceID = try container.decode(String.self, forKey: .instanceID)
        at = try container.decode(Date.self, forKey: .at)
        edges = try container.decode([EdgeCounters].self, forKey: .edges)
        paths = try container.decodeIfPresent([PathCounters].self, forKey: .paths) ?? []
    }
}

/// Cumulative counters of one edge as one proxy saw it.
public struct EdgeCounters: Codable, Sendable, Equatable {
    /// `inbound` (the reporting proxy is the destination) or `outbound` (it is the caller).
    public var direction: String
    /// Service names; `unknown` for a plaintext caller or an unroutable request.
    public var source: String
    public var destination: String
    public var tls: Bool
    public var requests: UInt64 = 0
    /// Responses with status 5xx, or none at all.
    public var failures: UInt64 = 0
    /// 403 answers of the inbound proxy's policy check.
    public var denials: UInt64 = 0
    /// Counts per bucket of ``latencyBoundsMs`` (not cumulative), plus one overflow bucket.
    public var latencyBuckets: [UInt64]
    public var latencySumMs: Double = 0
    /// Sums of the caller side's hop attribution (caller proxy, network, peer proxy, app) in
    /// milliseconds, over `hopSamples` requests.
    public var hopSumsMs: [Double] = [0, 0, 0, 0]
    public var hopSamples: UInt64 = 0

    /// Upper bounds of the latency buckets, in milliseconds.
    public static let latencyBoundsMs: [Double] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

    public init(direction: String, source: String, destination: String, tls: Bool) {
        self.direction = direction
        self.source = source
        self.destination = destination
        self.tls = tls
        self.latencyBuckets = Array(repeating: 0, count: Self.latencyBoundsMs.count + 1)
    }

    /// Counts one exchange.
    public mutating func add(status: Int, latencyMs: Double, denied: Bool, hopsMs: [Double]?) {
        requests += 1
        if status >= 500 || status == 0 { failures += 1 }
        if denied { denials += 1 }
        latencyBuckets[Self.bucket(forLatencyMs: latencyMs)] += 1
        latencySumMs += latencyMs
        if let hopsMs, hopsMs.count == 4 {
            addHops(callerProxy: hopsMs[0], network: hopsMs[1], peerProxy: hopsMs[2], app: hopsMs[3])
        }
    }

    /// Adds one exchange's hop attribution, in milliseconds (what `add`'s `hopsMs` does,
    /// without an array: the proxy calls it on every response from a peer).
    public mutating func addHops(callerProxy: Double, network: Double, peerProxy: Double, app: Double) {
        guard hopSumsMs.count == 4 else { return }
        hopSumsMs[0] += callerProxy
        hopSumsMs[1] += network
        hopSumsMs[2] += peerProxy
        hopSumsMs[3] += app
        hopSamples += 1
    }

    /// Adds another proxy's (or event loop's) counters of the same edge. Wrapping adds: the
    /// control plane validates reports (``isPlausible``), so they never wrap in practice, and a
    /// report must never be able to trap the process that sums it.
    public mutating func merge(_ other: EdgeCounters) {
        requests &+= other.requests
        failures &+= other.failures
        denials &+= other.denials
        for index in latencyBuckets.indices where index < other.latencyBuckets.count { latencyBuckets[index] &+= other.latencyBuckets[index] }
        latencySumMs += other.latencySumMs
        for index in hopSumsMs.indices where index < other.hopSumsMs.count { hopSumsMs[index] += other.hopSumsMs[index] }
        hopSamples &+= other.hopSamples
    }

    /// Whether a report's counters are internally consistent and within bounds: the shape
    /// the proxy sends, counts below 2^53, sub-counts not above the total, finite sums, and
    /// service names (or `unknown`/`other`) as the ends.
    public var isPlausible: Bool {
        let limit: UInt64 = 1 << 53
        func isName(_ text: String) -> Bool {
            text == "unknown" || text == "other" || (try? ServiceName(text)) != nil
        }
        return ["inbound", "outbound"].contains(direction) && isName(source) && isName(destination)
            && latencyBuckets.count == Self.latencyBoundsMs.count + 1 && hopSumsMs.count == 4
            && requests < limit && latencyBuckets.allSatisfy({ $0 < limit })
            && latencyBuckets.reduce(0, { $0 &+ $1 }) == requests
            && failures <= requests && denials <= requests && hopSamples <= requests
            && latencySumMs.isFinite && latencySumMs >= 0 && hopSumsMs.allSatisfy({ $0.isFinite && $0 >= 0 })
    }

    /// `self - earlier`: what happened between two reports of the same proxy (counters only
    /// grow; a restarted proxy, whose counters went down, counts from zero).
    public func since(_ earlier: EdgeCounters?) -> EdgeCounters {
        guard let earlier, earlier.requests <= requests else { return self }
        var delta = self
        delta.requests -= earlier.requests
        delta.failures -= min(delta.failures, earlier.failures)
        delta.denials -= min(delta.denials, earlier.denials)
        for index in delta.latencyBuckets.indices where index < earlier.latencyBuckets.count {
            delta.latencyBuckets[index] -= min(delta.latencyBuckets[index], earlier.latencyBuckets[index])
        }
        delta.latencySumMs = max(0, latencySumMs - earlier.latencySumMs)
        for index in delta.hopSumsMs.indices where index < earlier.hopSumsMs.count {
            delta.hopSumsMs[index] = max(0, hopSumsMs[index] - earlier.hopSumsMs[index])
        }
        delta.hopSamples -= min(delta.hopSamples, earlier.hopSamples)
        return delta
    }

    /// The latency below which `quantile` (0…1) of the requests fell, interpolated within
    /// its bucket; nil without requests.
    public func latencyQuantileMs(_ quantile: Double) -> Double? {
        Self.quantileMs(quantile, of: latencyBuckets)
    }

    /// The index in ``latencyBoundsMs`` (or the overflow bucket) a latency falls into.
    public static func bucket(forLatencyMs latencyMs: Double) -> Int {
        latencyBoundsMs.firstIndex { latencyMs <= $0 } ?? latencyBoundsMs.count
    }

    /// The quantile of a latency histogram laid out on ``latencyBoundsMs``, interpolated
    /// within its bucket; nil without requests.
    public static func quantileMs(_ quantile: Double, of latencyBuckets: [UInt64]) -> Double? {
        let total = latencyBuckets.reduce(0.0) { $0 + Double($1) }
        guard total > 0 else { return nil }
        let rank = quantile * total
        var seen = 0.0
        for (index, bucket) in latencyBuckets.enumerated() {
            let count = Double(bucket)
            if seen + count >= rank, count > 0 {
                let lower = index == 0 ? 0 : Self.latencyBoundsMs[index - 1]
                let upper = index < Self.latencyBoundsMs.count ? Self.latencyBoundsMs[index] : lower * 2
                return lower + (upper - lower) * (rank - seen) / count
            }
            seen += count
        }
        return Self.latencyBoundsMs.last
    }

    /// Edges are told apart by these.
    public var key: String { "\(direction)|\(source)|\(destination)|\(tls)" }
}

/// `mesh stat` rows: one service's inbound traffic over a window.
public struct ServiceStat: Codable, Sendable, Equatable {
    public var service: String
    public var instances: Int
    /// Successful share (not 5xx) of the requests, nil without traffic.
    public var successRate: Double?
    public var requestsPerSecond: Double
    public var p50Ms: Double?
    public var p95Ms: Double?
    public var p99Ms: Double?
    /// Share of requests that came over mTLS.
    public var mtlsShare: Double?
    public var denials: UInt64
    public var windowSeconds: Double
    public init(service: String, instances: Int, successRate: Double?, requestsPerSecond: Double, p50Ms: Double?, p95Ms: Double?,
                p99Ms: Double?, mtlsShare: Double?, denials: UInt64, windowSeconds: Double) {
        self.service = service
        self.instances = instances
        self.successRate = successRate
        self.requestsPerSecond = requestsPerSecond
        self.p50Ms = p50Ms
        self.p95Ms = p95Ms
        self.p99Ms = p99Ms
        self.mtlsShare = mtlsShare
        self.denials = denials
        self.windowSeconds = windowSeconds
    }
}

/// `mesh edges` rows: who calls whom, as the caller's proxy saw it, with the callee's
/// denials and the hop attribution.
public struct EdgeStat: Codable, Sendable, Equatable {
    public var source: String
    public var destination: String
    public var sourceIdentity: String
    public var destinationIdentity: String
    /// `true` when every request on the edge was mTLS.
    public var mtls: Bool
    public var requestsPerSecond: Double
    public var failures: UInt64
    public var successRate: Double?
    public var p50Ms: Double?
    public var p99Ms: Double?
    public var denials: UInt64
    /// Mean milliseconds per request in each hop: caller-proxy, network, peer-proxy, app.
    public var hopsMs: [String: Double]?
    public var windowSeconds: Double
    public init(source: String, destination: String, sourceIdentity: String, destinationIdentity: String, mtls: Bool,
                requestsPerSecond: Double, failures: UInt64, successRate: Double?, p50Ms: Double?, p99Ms: Double?, denials: UInt64,
                hopsMs: [String: Double]?, windowSeconds: Double) {
        self.source = source
        self.destination = destination
        self.sourceIdentity = sourceIdentity
        self.destinationIdentity = destinationIdentity
        self.mtls = mtls
        self.requestsPerSecond = requestsPerSecond
        self.failures = failures
        self.successRate = successRate
        self.p50Ms = p50Ms
        self.p99Ms = p99Ms
        self.denials = denials
        self.hopsMs = hopsMs
        self.windowSeconds = windowSeconds
    }
}

/// Requests to one method and path on the inbound side during one report interval, for
/// `mesh top`. Unlike ``EdgeCounters`` these are per interval (the proxy starts afresh after
/// each report), because the set of paths a proxy tracks changes as paths come and go.
public struct PathCounters: Codable, Sendable, Equatable {
    public var method: String
    /// The normalized path, at most 256 characters.
    public var path: String
    public var requests: UInt64 = 0
    public var failures: UInt64 = 0
    /// Counts per bucket of ``EdgeCounters/latencyBoundsMs`` plus one overflow bucket.
    public var latencyBuckets: [UInt64]
    /// How many of `requests` may belong to paths this entry replaced (the space-saving
    /// bound on its error): `requests - overcount` is certain.
    public var overcount: UInt64 = 0

    public init(method: String, path: String) {
        self.method = method
        self.path = path
        self.latencyBuckets = Array(repeating: 0, count: EdgeCounters.latencyBoundsMs.count + 1)
    }

    public mutating func add(status: Int, latencyMs: Double) {
        requests += 1
        if status >= 500 || status == 0 { failures += 1 }
        latencyBuckets[EdgeCounters.bucket(forLatencyMs: latencyMs)] += 1
    }

    public mutating func merge(_ other: PathCounters) {
        requests &+= other.requests
        failures &+= other.failures
        overcount &+= other.overcount
        for index in latencyBuckets.indices where index < other.latencyBuckets.count { latencyBuckets[index] &+= other.latencyBuckets[index] }
    }

    /// As ``EdgeCounters/isPlausible``, plus a short printable method and path (they end up
    /// on an operator's terminal).
    public var isPlausible: Bool {
        let limit: UInt64 = 1 << 53
        return !method.isEmpty && method.utf8.count <= 16 && method.utf8.allSatisfy({ (65...90).contains($0) || $0 == 45 })
            && path.utf8.count <= 256 && path.hasPrefix("/") && path.unicodeScalars.allSatisfy({ $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) })
            && latencyBuckets.count == EdgeCounters.latencyBoundsMs.count + 1 && requests < limit
            && latencyBuckets.allSatisfy({ $0 < limit }) && latencyBuckets.reduce(0, { $0 &+ $1 }) <= requests
            && failures <= requests && overcount <= requests
    }

    /// The latency quantile, as ``EdgeCounters/latencyQuantileMs(_:)``.
    public func latencyQuantileMs(_ quantile: Double) -> Double? {
        EdgeCounters.quantileMs(quantile, of: latencyBuckets)
    }
}

/// The busiest paths of one proxy's inbound side, bounded: the space-saving algorithm keeps
/// the `capacity` heaviest paths exactly enough (a newcomer replaces the lightest entry and
/// inherits its count as possible overcount), so paths with ids in them cannot grow it.
public struct TopPaths: Sendable {
    public let capacity: Int
    private struct Key: Hashable {
        var method: String
        var path: Substring
    }
    private var entries: [Key: PathCounters] = [:]

    public init(capacity: Int = 100) { self.capacity = capacity }

    public mutating func add(method: String, path: Substring, status: Int, latencyMs: Double) {
        let key = Key(method: method, path: path.prefix(256))
        // One hash for a path already counted (every request but a path's first): looking it
        // up and then adding through `entries[key]?` hashed the key twice.
        if let index = entries.index(forKey: key) {
            entries.values[index].add(status: status, latencyMs: latencyMs)
            return
        }
        var entry = PathCounters(method: method, path: String(key.path))
        if entries.count >= capacity, let lightest = entries.min(by: { $0.value.requests < $1.value.requests }) {
            entries[lightest.key] = nil
            entry.requests = lightest.value.requests
            entry.overcount = lightest.value.requests
        }
        entry.add(status: status, latencyMs: latencyMs)
        entries[key] = entry
    }

    /// Everything counted since the last call, and a fresh start.
    public mutating func take() -> [PathCounters] {
        defer { entries.removeAll(keepingCapacity: true) }
        return Array(entries.values)
    }
}

/// `mesh top` rows: a service's busiest paths over a window.
public struct PathStat: Codable, Sendable, Equatable {
    public var method: String
    public var path: String
    public var requestsPerSecond: Double
    public var successRate: Double?
    public var p50Ms: Double?
    public var p99Ms: Double?
    public init(method: String, path: String, requestsPerSecond: Double, successRate: Double?, p50Ms: Double?, p99Ms: Double?) {
        self.method = method
        self.path = path
        self.requestsPerSecond = requestsPerSecond
        self.successRate = successRate
        self.p50Ms = p50Ms
        self.p99Ms = p99Ms
    }
}
