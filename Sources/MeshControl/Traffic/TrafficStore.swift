import Foundation
import MeshCore

/// The recent traffic reports of every proxy, for `mesh stat` and `mesh edges`.
///
/// Each proxy pushes cumulative counters per edge; the store keeps the last few minutes of
/// reports per instance (bounded) and answers questions about a window as differences
/// between an instance's newest report and its oldest one inside the window.
public actor TrafficStore {
    private struct Sample {
        var at: Date
        var edges: [String: EdgeCounters]
        /// The instance's busiest inbound paths during the interval before `at`.
        var paths: [PathCounters]
    }
    private var samples: [String: [Sample]] = [:]
    /// Reports kept per instance: six minutes at the default 5 s interval.
    private let perInstance = 72
    private let maxInstances = 10_000
    private let clock: @Sendable () -> Date

    public init(clock: @escaping @Sendable () -> Date = { Date() }) {
        self.clock = clock
    }

    /// Stores one report (already checked to be the reporting proxy's own).
    func add(_ report: TrafficReport) {
        guard samples[report.instanceID] != nil || samples.count < maxInstances else { return }
        var list = samples[report.instanceID, default: []]
        // The control plane's clock, not the proxy's: windows must not depend on clock skew.
        list.append(Sample(at: clock(), edges: Dictionary(report.edges.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a }),
                           paths: Array(report.paths.prefix(1000))))
        if list.count > perInstance { list.removeFirst(list.count - perInstance) }
        samples[report.instanceID] = list
    }

    /// The busiest inbound paths of `instances` over the last `seconds`, summed over
    /// instances and report intervals, heaviest first.
    func topPaths(instances: Set<String>, seconds: Double) -> [(counters: PathCounters, perSecond: Double)] {
        let now = clock()
        var merged: [String: PathCounters] = [:]
        for id in instances {
            for sample in samples[id] ?? [] where now.timeIntervalSince(sample.at) <= seconds {
                for entry in sample.paths {
                    merged["\(entry.method) \(entry.path)", default: PathCounters(method: entry.method, path: entry.path)].merge(entry)
                }
            }
        }
        return merged.values.sorted { $0.requests > $1.requests }.map { ($0, Double($0.requests) / seconds) }
    }

    /// Every edge's traffic within the last `seconds`, summed over instances, with the
    /// request rate; instances with fewer than two reports in the window are not counted yet.
    func window(seconds: Double) -> [(counters: EdgeCounters, perSecond: Double)] {
        let now = clock()
        var merged: [String: (counters: EdgeCounters, perSecond: Double)] = [:]
        for (id, list) in samples {
            let recent = list.filter { now.timeIntervalSince($0.at) <= seconds + 1 }
            guard let newest = recent.last, let oldest = recent.first, newest.at > oldest.at else {
                if let newest = list.last, now.timeIntervalSince(newest.at) > 600 { samples[id] = nil }
                continue
            }
            let span = newest.at.timeIntervalSince(oldest.at)
            for (key, counters) in newest.edges {
                let delta = counters.since(oldest.edges[key])
                guard delta.requests > 0 else { continue }
                var entry = merged[key] ?? (EdgeCounters(direction: counters.direction, source: counters.source,
                                                         destination: counters.destination, tls: counters.tls), 0)
                entry.counters.merge(delta)
                entry.perSecond += Double(delta.requests) / span
                merged[key] = entry
            }
        }
        return merged.values.sorted { $0.counters.key < $1.counters.key }
    }
}
