/// What a service's route keeps across registry updates (routes are rebuilt on every one):
/// the retry budget, requests waiting for a connection, the round-robin position.
final class RouteCounters {
    let budget = RetryBudget()
    var pending = 0
    var nextRoundRobin = 0
}

/// How many retries a service's callers may add on this loop (Linkerd's retry budget): at
/// most `percent` of the requests of the last 10 s, plus `minPerSecond` a second so that a
/// quiet service can still retry. A failing service thus gets at most 1.2× its traffic from
/// this proxy instead of (1 + attempts)×, and a retry storm cannot build up.
final class RetryBudget {
    private struct Second {
        var second: UInt64 = 0
        var requests = 0
        var retries = 0
    }
    private var window = [Second](repeating: Second(), count: 10)

    private func slot(_ now: UInt64) -> Int {
        let second = now / 1_000_000_000
        let index = Int(second % 10)
        if window[index].second != second { window[index] = Second(second: second) }
        return index
    }

    func request(now: UInt64) {
        window[slot(now)].requests += 1
    }

    /// Takes one retry from the budget if there is room.
    func withdraw(now: UInt64, percent: Int, minPerSecond: Int) -> Bool {
        let current = slot(now)
        let second = now / 1_000_000_000
        let oldest = second >= 9 ? second - 9 : 0
        var requests = 0
        var retries = 0
        for entry in window where entry.second >= oldest {
            requests += entry.requests
            retries += entry.retries
        }
        let allowed = Double(minPerSecond) * 10 + Double(requests) * Double(percent) / 100
        guard Double(retries) < allowed else { return false }
        window[current].retries += 1
        return true
    }
}
