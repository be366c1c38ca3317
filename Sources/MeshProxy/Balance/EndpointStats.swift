import Foundation

/// What one event loop has learnt about one endpoint it calls: a peak-EWMA of its response
/// times, its requests in flight, and its failures in a row (outlier detection). Only touched
/// on its loop. Kept across registry updates for as long as the endpoint stays registered.
final class EndpointStats {
    /// Latency estimate in nanoseconds as of `updated`; 0 until the first response, so a new
    /// endpoint gets traffic at once.
    private var estimate = 0.0
    private var updated: UInt64 = 0
    var inFlight = 0
    private(set) var consecutiveFailures = 0
    private var consecutiveSuccesses = 0
    /// Uptime nanoseconds until which the endpoint gets no requests (0: never ejected).
    private(set) var ejectedUntil: UInt64 = 0
    /// Ejections in a row: the n-th lasts n times the base.
    private(set) var ejections = 0

    /// How fast the estimate forgets (Finagle's and Linkerd's 10 s): a slow endpoint that got
    /// no requests for a while is tried again.
    static let decayNanos = 10e9

    /// The estimate decayed to `now`.
    func latency(now: UInt64) -> Double {
        guard estimate > 0, now > updated else { return estimate }
        return estimate * exp(-Double(now - updated) / Self.decayNanos)
    }

    /// Peak-EWMA: a slower response counts at once, faster ones pull the estimate down
    /// gradually (so one fast answer does not hide a slow endpoint).
    func observe(latencyNanos: UInt64, now: UInt64) {
        let sample = Double(latencyNanos)
        if sample > estimate || estimate == 0 {
            estimate = sample
        } else {
            let decay = exp(-Double(now &- updated) / Self.decayNanos)
            estimate = estimate * decay + sample * (1 - decay)
        }
        updated = now
    }

    func isEjected(now: UInt64) -> Bool { now < ejectedUntil }

    /// Counts an outcome; returns true when this failure crosses the threshold (the caller
    /// decides whether the service can spare the endpoint, then calls ``eject``).
    func record(failed: Bool, threshold: Int) -> Bool {
        guard failed else {
            consecutiveFailures = 0
            consecutiveSuccesses += 1
            // Healthy for a while: the next ejection starts from the base again.
            if consecutiveSuccesses >= 10 { ejections = 0 }
            return false
        }
        consecutiveSuccesses = 0
        consecutiveFailures += 1
        return threshold > 0 && consecutiveFailures >= threshold
    }

    func eject(now: UInt64, baseSeconds: Double) {
        ejections += 1
        let seconds = min(baseSeconds * Double(ejections), 300)
        ejectedUntil = now &+ UInt64(seconds * 1e9)
        consecutiveFailures = 0
    }
}
