import struct Foundation.Date

/// One step of a service's golden metrics over time: its inbound traffic (what its callers
/// got) between the previous point and `at`. The control plane keeps an hour of them per
/// service for the dashboard's charts.
public struct SeriesPoint: Codable, Sendable, Equatable {
    /// End of the step.
    public var at: Date
    /// Length of the step in seconds.
    public var seconds: Double
    public var requests: UInt64
    public var failures: UInt64
    public var denials: UInt64
    public var requestsPerSecond: Double
    /// Successful share (not 5xx), nil without traffic.
    public var successRate: Double?
    public var p50Ms: Double?
    public var p99Ms: Double?

    /// `requestsPerSecond` is measured over the time the proxies' reports covered, which
    /// is not the step's length when reports and steps do not line up.
    public init(at: Date, seconds: Double, counters: EdgeCounters, requestsPerSecond: Double) {
        self.at = at
        self.seconds = seconds
        requests = counters.requests
        failures = counters.failures
        denials = counters.denials
        self.requestsPerSecond = requestsPerSecond
        successRate = counters.requests > 0 ? 1 - Double(counters.failures) / Double(counters.requests) : nil
        p50Ms = counters.latencyQuantileMs(0.5)
        p99Ms = counters.latencyQuantileMs(0.99)
    }
}
