import Foundation
import Logging
import MeshCore
import MeshTransport

/// Sends the proxy's cumulative traffic counters per edge to the control plane at the
/// heartbeat interval, for `mesh stat` and `mesh edges` (push: the control plane never needs
/// to reach the proxies' admin ports). Best effort: a dead control plane costs reports,
/// never requests; the next report carries the totals.
struct TrafficReporter: Sendable {
    let identity: IdentityManager
    let states: LoopStates
    let instanceID: String
    let interval: Duration
    let logger: Logger

    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            var merged: [String: EdgeCounters] = [:]
            for counters in await states.gather({ $0.edgeCounters() }) {
                if var existing = merged[counters.key] {
                    existing.merge(counters)
                    merged[counters.key] = existing
                } else {
                    merged[counters.key] = counters
                }
            }
            var paths: [String: PathCounters] = [:]
            for entry in await states.gather({ state -> [PathCounters] in state.topPaths.take() }) {
                paths["\(entry.method) \(entry.path)", default: PathCounters(method: entry.method, path: entry.path)].merge(entry)
            }
            // Sent even when empty: the first report is the zero every later one is compared with.
            let report = TrafficReport(instanceID: instanceID, at: Date(), edges: merged.values.sorted { $0.key < $1.key },
                                       paths: Array(paths.values))
            do {
                _ = try await identity.controlClient().send(.POST, ControlAPI.trafficPath, json: report).decode([String: Bool].self)
            } catch {
                logger.debug("could not report traffic", metadata: ["error": "\(error)"])
            }
        }
    }
}
