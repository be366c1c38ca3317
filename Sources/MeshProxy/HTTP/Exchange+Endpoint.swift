import Logging

/// An exchange's hold on the balancer: the endpoint it was sent to and its service's count of
/// requests waiting for a connection. Both HTTP/1.1 paths (``ExpressHandler`` and
/// ``ProxyHTTPHandler``) take and give back both through these, once per exchange.
extension Exchange {
    /// Counts the request as waiting for a connection to its service (circuit breaking);
    /// every exchange leaves when connected or, at the latest, when it is recorded.
    mutating func enterPending() {
        guard pendingOn == nil, let route else { return }
        route.pending += 1
        pendingOn = route
    }

    mutating func leavePending() {
        guard let route = pendingOn else { return }
        route.pending -= 1
        pendingOn = nil
    }

    /// Gives the endpoint its request back without an outcome (the caller went away).
    mutating func releaseEndpoint() {
        endpoint?.inFlight -= 1
        endpoint = nil
    }

    /// Tells the balancer how the endpoint did (once per exchange): failed or not, and the
    /// time from the request's first byte upstream to the response head.
    mutating func settleEndpoint(failed: Bool, logger: Logger) {
        guard let endpoint, let route else { return }
        endpoint.inFlight -= 1
        self.endpoint = nil
        let latency = upstreamStart > 0 && responseHead > upstreamStart ? responseHead - upstreamStart : nil
        route.finished(endpoint, failed: failed, latencyNanos: latency, now: Exchange.now(), logger: logger)
    }
}
