/// A `TrafficPolicy` resource: how callers reach one service — the load balancer and the
/// passive health check (outlier detection) every calling proxy applies. Set centrally with
/// `mesh apply`; without one, a service gets the defaults below.
///
/// ```yaml
/// kind: TrafficPolicy
/// metadata: {name: api}              # the destination service
/// spec:
///   loadBalancer: p2c-ewma           # p2c-ewma (default) | least-request | round-robin
///   outlierDetection:
///     consecutiveFailures: 5         # 5xx answers or failed connects in a row; 0: off
///     baseEjection: 30s              # the first ejection; the n-th lasts n times as long (≤ 5 min)
///     maxEjectedPercent: 50          # never eject more of the service's endpoints than this
/// ```
public struct TrafficPolicy: Codable, Sendable, Equatable {
    public struct Metadata: Codable, Sendable, Equatable {
        public var name: String
        public init(name: String) { self.name = name }
    }

    public struct OutlierDetection: Codable, Sendable, Equatable {
        public var consecutiveFailures: Int?
        public var baseEjection: String?
        public var maxEjectedPercent: Int?
        public init(consecutiveFailures: Int? = nil, baseEjection: String? = nil, maxEjectedPercent: Int? = nil) {
            self.consecutiveFailures = consecutiveFailures
            self.baseEjection = baseEjection
            self.maxEjectedPercent = maxEjectedPercent
        }
    }

    public struct Spec: Codable, Sendable, Equatable {
        public var loadBalancer: String?
        public var outlierDetection: OutlierDetection?
        public init(loadBalancer: String? = nil, outlierDetection: OutlierDetection? = nil) {
            self.loadBalancer = loadBalancer
            self.outlierDetection = outlierDetection
        }
    }

    public static let kindName = "TrafficPolicy"
    public static let loadBalancers = ["p2c-ewma", "least-request", "round-robin"]

    public var kind: String
    public var metadata: Metadata
    public var spec: Spec

    public init(service: String, spec: Spec) {
        kind = Self.kindName
        metadata = Metadata(name: service)
        self.spec = spec
    }

    /// The settings a calling proxy applies, defaults filled in (Linkerd-like: P2C over
    /// peak-EWMA latency, and failure accrual on).
    public struct Effective: Sendable, Equatable {
        public enum Balancer: String, Sendable { case p2cEWMA = "p2c-ewma", leastRequest = "least-request", roundRobin = "round-robin" }
        public var balancer: Balancer = .p2cEWMA
        /// 0 turns outlier detection off.
        public var consecutiveFailures = 5
        public var baseEjectionSeconds = 30.0
        public var maxEjectedPercent = 50
        public init() {}
    }

    /// This policy's settings with defaults for what it leaves out (it was validated on
    /// apply; anything unreadable falls back to the default).
    public var effective: Effective {
        var result = Effective()
        if let name = spec.loadBalancer, let balancer = Effective.Balancer(rawValue: name) { result.balancer = balancer }
        if let outlier = spec.outlierDetection {
            if let count = outlier.consecutiveFailures, count >= 0 { result.consecutiveFailures = count }
            if let text = outlier.baseEjection, let seconds = try? DurationParser.seconds(text), seconds > 0 {
                result.baseEjectionSeconds = seconds
            }
            if let percent = outlier.maxEjectedPercent, (0...100).contains(percent) { result.maxEjectedPercent = percent }
        }
        return result
    }
}
