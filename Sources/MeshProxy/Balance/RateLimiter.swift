import MeshCore

/// The local rate limits of this proxy's own service (`rateLimits` of its TrafficPolicy):
/// token buckets per limit and caller identity (or one per limit with `by: all`). Each proxy
/// enforces the rate for its instance; with several loops, each takes its share. Bounded:
/// at most 10,000 buckets, forgotten all at once when full (a burst of new callers then
/// starts from full buckets, which errs on letting requests through).
final class RateLimiter {
    private struct Bucket {
        var tokens: Double
        var at: UInt64
    }
    private var buckets: [String: Bucket] = [:]

    /// The limit that applies to `path` and whether a request may pass it now (a token is
    /// taken if so); nil limit when none applies.
    func admit(_ limits: [TrafficPolicy.EffectiveRateLimit], caller: String, path: String, loops: Int,
               now: UInt64) -> (limit: TrafficPolicy.EffectiveRateLimit?, allowed: Bool) {
        guard let index = limits.firstIndex(where: { path.hasPrefix($0.pathPrefix) }) else { return (nil, true) }
        let limit = limits[index]
        let rate = limit.requestsPerSecond / Double(max(loops, 1))
        let capacity = max(1, limit.burst / Double(max(loops, 1)))
        let key = limit.perCaller ? "\(index)|\(caller)" : "\(index)"
        if buckets[key] == nil, buckets.count >= 10_000 { buckets.removeAll(keepingCapacity: true) }
        var bucket = buckets[key] ?? Bucket(tokens: capacity, at: now)
        bucket.tokens = min(capacity, bucket.tokens + Double(now &- bucket.at) / 1e9 * rate)
        bucket.at = now
        let allowed = bucket.tokens >= 1
        if allowed { bucket.tokens -= 1 }
        buckets[key] = bucket
        return (limit, allowed)
    }

    /// Drops every bucket (the limits changed).
    func reset() { buckets.removeAll() }
}
