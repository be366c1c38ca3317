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
    /// Per service, its inbound traffic per history step, oldest first (the dashboard's charts).
    private var history: [String: [SeriesPoint]] = [:]
    /// Per instance, the edges as of the last history step: the next step counts from here.
    private var historyCursor: [String: (at: Date, edges: [String: EdgeCounters])] = [:]
    private var lastHistoryStep: Date?
    /// An hour at the default 10 s step; 1000 services at most (about 70 MB at worst).
    private let historyPoints = 360
    private let maxHistoryServices = 1000
    /// Reports kept per instance: six minutes at the default 5 s interval.
    private let perInstance = 72
    private let maxInstances = 10_000
    private let clock: @Sendable () -> Date

    public init(clock: @escaping @Sendable () -> Date = { Date() }) {
        self.clock = clock
    }

    /// Stores one report (already checked to be the reporting proxy's own).
    func add(_ report: TrafficReport) {
        let now = clock()
        if samples[report.instanceID] == nil, samples.count >= maxInstances {
            // Instance ids are new at every proxy start: forget the ones gone quiet first.
            samples = samples.filter { now.timeIntervalSince($0.value.last?.at ?? .distantPast) < 600 }
            guard samples.count < maxInstances else { return }
        }
        var list = samples[report.instanceID, default: []]
        // A proxy reporting faster than five times a second gains nothing but memory here.
        if let last = list.last, now.timeIntervalSince(last.at) < 0.2 { return }
        // The control plane's clock, not the proxy's: windows must not depend on clock skew.
        list.append(Sample(at: now, edges: Dictionary(report.edges.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a }),
                           paths: Array(report.paths.prefix(1000))))
        if list.count > perInstance { list.removeFirst(list.count - perInstance) }
        samples[report.instanceID] = list
    }

    /// The busiest inbound paths of `instances` over the last `seconds`, summed over
    /// instances and report intervals, heaviest first.
    ///
    /// Each sample covers the interval since the one before it, so an instance's rate is its
    /// requests over the time from the last sample before the window to its newest one. A
    /// path that entered a proxy's table by replacing another counts only what is certain
    /// (`requests - overcount`).
    func topPaths(instances: Set<String>, seconds: Double) -> [(counters: PathCounters, perSecond: Double)] {
        let now = clock()
        var merged: [String: (counters: PathCounters, perSecond: Double)] = [:]
        for id in instances {
            let list = samples[id] ?? []
            guard let firstIn = list.firstIndex(where: { now.timeIntervalSince($0.at) <= seconds }), let newest = list.last else { continue }
            let start = firstIn > 0 ? list[firstIn - 1].at : list[firstIn].at
            let covered = max(newest.at.timeIntervalSince(start), 1)
            for sample in list[firstIn...] {
                for var entry in sample.paths {
                    entry.requests -= min(entry.overcount, entry.requests)
                    entry.overcount = 0
                    guard entry.requests > 0 else { continue }
                    let key = "\(entry.method) \(entry.path)"
                    var row = merged[key] ?? (PathCounters(method: entry.method, path: entry.path), 0)
                    row.counters.merge(entry)
                    row.perSecond += Double(entry.requests) / covered
                    merged[key] = row
                }
            }
        }
        return merged.values.sorted { $0.counters.requests > $1.counters.requests }
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

    /// Closes one history step: each instance's inbound traffic since the previous step,
    /// summed per service. `services` (the registry's) get a point even when idle, so that a
    /// chart shows traffic stopping rather than a gap.
    func recordHistory(services: [String]) {
        let now = clock()
        defer { lastHistoryStep = now }
        guard let previous = lastHistoryStep else {
            historyCursor = samples.compactMapValues { list in list.last.map { ($0.at, $0.edges) } }
            return
        }
        let seconds = now.timeIntervalSince(previous)
        guard seconds > 0 else { return }
        var perService: [String: (counters: EdgeCounters, perSecond: Double)] = [:]
        func empty(_ service: String) -> (counters: EdgeCounters, perSecond: Double) {
            (EdgeCounters(direction: "inbound", source: "*", destination: service, tls: true), 0)
        }
        for service in services.prefix(maxHistoryServices) { perService[service] = empty(service) }
        var cursors: [String: (at: Date, edges: [String: EdgeCounters])] = [:]
        for (id, list) in samples {
            guard let newest = list.last else { continue }
            cursors[id] = (newest.at, newest.edges)
            // An instance first seen in this step counts from its first report: what it did
            // before that is not known to have happened in this step.
            guard let base = historyCursor[id] ?? list.first.map({ ($0.at, $0.edges) }) else { continue }
            // Rates over the time the reports cover, not the step: a step holding two reports
            // of a proxy and the next holding three must not read as a rate going up and down.
            let covered = newest.at.timeIntervalSince(base.at)
            guard covered > 0 else { continue }
            for (key, counters) in newest.edges where counters.direction == "inbound" {
                guard perService[counters.destination] != nil || perService.count < maxHistoryServices else { continue }
                let delta = counters.since(base.edges[key])
                guard delta.requests > 0 else { continue }
                var entry = perService[counters.destination] ?? empty(counters.destination)
                entry.counters.merge(delta)
                entry.perSecond += Double(delta.requests) / covered
                perService[counters.destination] = entry
            }
        }
        historyCursor = cursors
        for (service, entry) in perService {
            var points = history[service, default: []]
            points.append(SeriesPoint(at: now, seconds: seconds, counters: entry.counters, requestsPerSecond: entry.perSecond))
            if points.count > historyPoints { points.removeFirst(points.count - historyPoints) }
            history[service] = points
        }
        // Services gone from the registry keep their points until those are an hour old.
        history = history.filter { perService[$0.key] != nil || ($0.value.last.map { now.timeIntervalSince($0.at) < 3600 } ?? false) }
    }

    /// A service's history steps that ended within the last `seconds`, oldest first.
    func series(service: String, seconds: Double) -> [SeriesPoint] {
        let now = clock()
        return (history[service] ?? []).filter { now.timeIntervalSince($0.at) <= seconds }
    }
}
