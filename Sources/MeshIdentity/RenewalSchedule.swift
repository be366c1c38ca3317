import Foundation

/// When to renew an SVID: at half of its lifetime, with jitter so that a fleet issued at the
/// same moment does not renew in the same second; and how long to wait after a failure.
public struct RenewalSchedule: Sendable {
    /// Share of the lifetime after which renewal starts (0.5 = 50 %).
    public var fraction: Double = 0.5
    /// Up to this share of the lifetime is added or removed at random.
    public var jitter: Double = 0.05

    public init(fraction: Double = 0.5, jitter: Double = 0.05) {
        self.fraction = fraction
        self.jitter = jitter
    }

    public func renewalTime(notBefore: Date, notAfter: Date,
                            random: Double = Double.random(in: -1...1)) -> Date {
        let lifetime = notAfter.timeIntervalSince(notBefore)
        return notBefore.addingTimeInterval(lifetime * (fraction + jitter * random))
    }

    /// Exponential backoff with full jitter, capped so that retries continue well before expiry.
    public func retryDelay(attempt: Int, notAfter: Date, now: Date) -> TimeInterval {
        let base = min(30.0, 0.5 * pow(2.0, Double(min(attempt, 10))))
        let remaining = max(1.0, notAfter.timeIntervalSince(now) / 10)
        return Double.random(in: 0.2...1.0) * min(base, remaining)
    }
}
