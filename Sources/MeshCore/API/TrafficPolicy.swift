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
///   timeouts:
///     request: 10s                   # until the response head, retries included: 504 request-timeout
///     perTry: 2s                     # one attempt: retried if allowed, else 504 per-try-timeout
///     idle: 10m                      # a connection or TCP stream to the service idle this long is closed (default 1h)
///   retries:
///     attempts: 2                    # further attempts after the first; 0: none
///     on: [connect-failure, reset, 503]   # conditions and 5xx statuses (default: the first two)
///     nonIdempotent: false           # also POST/PATCH (bodies up to 64 KiB are kept for it)
///     budget: {percent: 20, minPerSecond: 10}   # retries allowed on top of requests, over 10 s
///     backoff: {base: 25ms, max: 250ms}         # exponential, with full jitter
///   rateLimits:                      # enforced by each instance's own proxy: 429 beyond
///     - {pathPrefix: /checkout, requestsPerSecond: 5, burst: 10, by: caller}   # first match applies
///     - {requestsPerSecond: 100}     # by: caller (each caller identity) or all (shared)
///   routes:                          # first match wins: requests to a subset of the instances,
///     - {match: {headers: {x-canary: "1"}, pathPrefix: /}, to: {version: v2}}
///     - match: {pathPrefix: /reports}    # and/or with their own timeouts and retries
///       timeouts: {request: 30s}
///       retries: {attempts: 0}
///   split:                           # otherwise, weighted subsets by instance labels (canary)
///     - {labels: {version: v1}, weight: 90}
///     - {labels: {version: v2}, weight: 10}
///   circuitBreaker:                  # in each caller's proxy; beyond: 503 overloaded at once
///     maxRequests: 100               # in flight to one endpoint
///     maxPendingRequests: 100        # waiting for a connection to the service
///   fault:                           # injected by the callers' proxies, for resilience tests
///     delay: {percent: 10, duration: 200ms}
///     abort: {percent: 5, status: 503}
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

    public struct Timeouts: Codable, Sendable, Equatable {
        public var request: String?
        public var perTry: String?
        /// No bytes either way for this long closes a connection to the service (HTTP
        /// keep-alive, WebSocket, opaque TCP stream): at the service's own proxy and at
        /// callers' `--upstream` ports. Applies to connections opened after the change.
        public var idle: String?
        public init(request: String? = nil, perTry: String? = nil, idle: String? = nil) {
            self.request = request
            self.perTry = perTry
            self.idle = idle
        }
    }

    public struct Retries: Codable, Sendable, Equatable {
        public struct Budget: Codable, Sendable, Equatable {
            public var percent: Int?
            public var minPerSecond: Int?
            public init(percent: Int? = nil, minPerSecond: Int? = nil) {
                self.percent = percent
                self.minPerSecond = minPerSecond
            }
        }
        public struct Backoff: Codable, Sendable, Equatable {
            public var base: String?
            public var max: String?
            public init(base: String? = nil, max: String? = nil) {
                self.base = base
                self.max = max
            }
        }
        public var attempts: Int?
        public var on: [String]?
        public var nonIdempotent: Bool?
        public var budget: Budget?
        public var backoff: Backoff?
        public init(attempts: Int? = nil, on: [String]? = nil, nonIdempotent: Bool? = nil, budget: Budget? = nil, backoff: Backoff? = nil) {
            self.attempts = attempts
            self.on = on
            self.nonIdempotent = nonIdempotent
            self.budget = budget
            self.backoff = backoff
        }
    }

    public struct RateLimit: Codable, Sendable, Equatable {
        public var pathPrefix: String?
        public var requestsPerSecond: Double
        public var burst: Double?
        /// `caller` (default: a bucket per caller identity) or `all` (one bucket).
        public var by: String?
        public init(pathPrefix: String? = nil, requestsPerSecond: Double, burst: Double? = nil, by: String? = nil) {
            self.pathPrefix = pathPrefix
            self.requestsPerSecond = requestsPerSecond
            self.burst = burst
            self.by = by
        }
    }

    public struct Fault: Codable, Sendable, Equatable {
        public struct Delay: Codable, Sendable, Equatable {
            public var percent: Double
            public var duration: String
            public init(percent: Double, duration: String) {
                self.percent = percent
                self.duration = duration
            }
        }
        public struct Abort: Codable, Sendable, Equatable {
            public var percent: Double
            public var status: Int
            public init(percent: Double, status: Int) {
                self.percent = percent
                self.status = status
            }
        }
        public var delay: Delay?
        public var abort: Abort?
        public init(delay: Delay? = nil, abort: Abort? = nil) {
            self.delay = delay
            self.abort = abort
        }
    }

    /// A route to a subset of the service's instances, for requests that match.
    public struct Route: Codable, Sendable, Equatable {
        public struct Match: Codable, Sendable, Equatable {
            /// Exact values, header names case-insensitive.
            public var headers: [String: String]?
            public var pathPrefix: String?
            public init(headers: [String: String]? = nil, pathPrefix: String? = nil) {
                self.headers = headers
                self.pathPrefix = pathPrefix
            }
        }
        public var match: Match
        /// Instance labels the subset must have; nil: every instance of the service (a route
        /// that only sets its own timeouts or retries).
        public var to: [String: String]?
        /// Timeouts of matching requests (`request`, `perTry`), instead of the service's.
        public var timeouts: Timeouts?
        /// Retries of matching requests (`attempts`, `on`, `nonIdempotent`, `backoff`) instead
        /// of the service's; the retry budget stays the service's.
        public var retries: Retries?
        public init(match: Match, to: [String: String]? = nil, timeouts: Timeouts? = nil, retries: Retries? = nil) {
            self.match = match
            self.to = to
            self.timeouts = timeouts
            self.retries = retries
        }
    }

    /// One weighted subset of a split.
    public struct Split: Codable, Sendable, Equatable {
        public var labels: [String: String]
        public var weight: Int
        public init(labels: [String: String], weight: Int) {
            self.labels = labels
            self.weight = weight
        }
    }

    public struct CircuitBreaker: Codable, Sendable, Equatable {
        public var maxRequests: Int?
        public var maxPendingRequests: Int?
        public init(maxRequests: Int? = nil, maxPendingRequests: Int? = nil) {
            self.maxRequests = maxRequests
            self.maxPendingRequests = maxPendingRequests
        }
    }

    public struct Spec: Codable, Sendable, Equatable {
        public var routes: [Route]?
        public var split: [Split]?
        public var circuitBreaker: CircuitBreaker?
        public var loadBalancer: String?
        public var outlierDetection: OutlierDetection?
        public var timeouts: Timeouts?
        public var retries: Retries?
        public var rateLimits: [RateLimit]?
        public var fault: Fault?
        public init(loadBalancer: String? = nil, outlierDetection: OutlierDetection? = nil, timeouts: Timeouts? = nil,
                    retries: Retries? = nil, rateLimits: [RateLimit]? = nil, fault: Fault? = nil, circuitBreaker: CircuitBreaker? = nil,
                    routes: [Route]? = nil, split: [Split]? = nil) {
            self.routes = routes
            self.split = split
            self.circuitBreaker = circuitBreaker
            self.loadBalancer = loadBalancer
            self.outlierDetection = outlierDetection
            self.timeouts = timeouts
            self.retries = retries
            self.rateLimits = rateLimits
            self.fault = fault
        }
    }

    /// Retry conditions besides 5xx status codes.
    public static let retryConditions = ["connect-failure", "reset"]

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
        /// 0: no timeout.
        public var requestTimeoutSeconds = 0.0
        public var perTryTimeoutSeconds = 0.0
        /// 0: the proxy's own idle timeout (1 h).
        public var idleTimeoutSeconds = 0.0
        /// Further attempts after the first. Failures where no response came (connect
        /// failure, reset) are retried by default: the app never saw the request.
        public var retryAttempts = 2
        public var retryOnConnectFailure = true
        public var retryOnReset = true
        public var retryStatuses: Set<Int> = []
        public var retryNonIdempotent = false
        public var budgetPercent = 20
        public var budgetMinPerSecond = 10
        public var backoffBaseSeconds = 0.025
        public var backoffMaxSeconds = 0.25
        /// Checked in order by the destination's own proxy; the first that matches applies.
        public var rateLimits: [EffectiveRateLimit] = []
        /// 0 to 100.
        public var faultDelayPercent = 0.0
        public var faultDelaySeconds = 0.0
        public var faultAbortPercent = 0.0
        public var faultAbortStatus = 503
        /// 0: no limit.
        public var maxRequestsPerEndpoint = 0
        public var maxPendingRequests = 0
        /// Header names lower-cased.
        public var routes: [Route] = []
        /// Per route (same order as `routes`): the settings of a route that has its own
        /// timeouts or retries, the service's with those replaced; nil for the others.
        public var routeSettings: [Effective?] = []
        /// Only subsets with a positive weight.
        public var split: [Split] = []
        public init() {}
    }

    public struct EffectiveRateLimit: Sendable, Equatable {
        public var pathPrefix: String
        public var requestsPerSecond: Double
        public var burst: Double
        public var perCaller: Bool
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
        func seconds(_ text: String?) -> Double? {
            text.flatMap { try? DurationParser.seconds($0) }.flatMap { $0 >= 0 ? $0 : nil }
        }
        result.apply(spec.timeouts)
        result.apply(spec.retries)
        result.rateLimits = (spec.rateLimits ?? []).filter { $0.requestsPerSecond > 0 && $0.requestsPerSecond.isFinite }.map { limit in
            EffectiveRateLimit(pathPrefix: limit.pathPrefix ?? "/", requestsPerSecond: limit.requestsPerSecond,
                               burst: Swift.max(1, limit.burst ?? limit.requestsPerSecond), perCaller: limit.by != "all")
        }
        result.routes = (spec.routes ?? []).map { route in
            var route = route
            route.match.headers = route.match.headers.map { Dictionary($0.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { a, _ in a }) }
            if route.to?.isEmpty == true { route.to = nil }
            return route
        }
        result.split = (spec.split ?? []).filter { $0.weight > 0 }
        if let maximum = spec.circuitBreaker?.maxRequests, maximum > 0 { result.maxRequestsPerEndpoint = maximum }
        if let maximum = spec.circuitBreaker?.maxPendingRequests, maximum > 0 { result.maxPendingRequests = maximum }
        if let delay = spec.fault?.delay, let duration = seconds(delay.duration), (0...100).contains(delay.percent) {
            result.faultDelayPercent = delay.percent
            result.faultDelaySeconds = duration
        }
        if let abort = spec.fault?.abort, (0...100).contains(abort.percent), (200...599).contains(abort.status) {
            result.faultAbortPercent = abort.percent
            result.faultAbortStatus = abort.status
        }
        // Last: a route's settings are the service's, everything else included, with the
        // route's timeouts and retries on top.
        let service = result
        result.routeSettings = result.routes.map { route in
            guard route.timeouts != nil || route.retries != nil else { return nil }
            var settings = service
            settings.routes = []
            settings.apply(route.timeouts)
            settings.apply(route.retries)
            return settings
        }
        return result
    }
}

extension TrafficPolicy.Effective {
    private static func seconds(_ text: String?) -> Double? {
        text.flatMap { try? DurationParser.seconds($0) }.flatMap { $0 >= 0 ? $0 : nil }
    }

    /// Takes the timeouts that are set; the others stay.
    mutating func apply(_ timeouts: TrafficPolicy.Timeouts?) {
        guard let timeouts else { return }
        if let request = Self.seconds(timeouts.request) { requestTimeoutSeconds = request }
        if let perTry = Self.seconds(timeouts.perTry) { perTryTimeoutSeconds = perTry }
        if let idle = Self.seconds(timeouts.idle) { idleTimeoutSeconds = idle }
    }

    /// Takes the retry settings that are set; the others stay.
    mutating func apply(_ retries: TrafficPolicy.Retries?) {
        guard let retries else { return }
        if let attempts = retries.attempts, (0...10).contains(attempts) { retryAttempts = attempts }
        if let on = retries.on {
            retryOnConnectFailure = on.contains("connect-failure")
            retryOnReset = on.contains("reset")
            retryStatuses = Set(on.compactMap { Int($0) }.filter { (500...599).contains($0) })
        }
        if let nonIdempotent = retries.nonIdempotent { retryNonIdempotent = nonIdempotent }
        if let percent = retries.budget?.percent, (0...1000).contains(percent) { budgetPercent = percent }
        if let minimum = retries.budget?.minPerSecond, (0...100_000).contains(minimum) { budgetMinPerSecond = minimum }
        if let base = Self.seconds(retries.backoff?.base) { backoffBaseSeconds = base }
        if let max = Self.seconds(retries.backoff?.max) { backoffMaxSeconds = Swift.max(max, backoffBaseSeconds) }
    }
}
