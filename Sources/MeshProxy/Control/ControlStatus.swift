import Foundation
import NIOConcurrencyHelpers

/// How current the proxy's view of the control plane is. Without a control plane a proxy
/// keeps serving with its last registry, policies and SVID (static stability), so `/ready`
/// stays ready; this says, in `/ready`'s details and in metrics, how old that view is and
/// why, so that operators see a stale proxy before its SVID runs out.
final class ControlStatus: Sendable {
    struct Value: Sendable {
        /// The last answer from a replica: a heartbeat, a registry event, a keepalive, a renewal.
        var lastContact: Date?
        var lastError: String?
        /// Whether the registry stream is open (changes arrive as they happen).
        var streaming = false
        var registryVersion: UInt64 = 0
    }

    private let box = NIOLockedValueBox(Value())
    /// Contact older than this makes the view stale (three heartbeats).
    let staleAfter: TimeInterval

    init(heartbeatInterval: Duration) {
        let seconds = Double(heartbeatInterval.components.seconds) + Double(heartbeatInterval.components.attoseconds) / 1e18
        staleAfter = max(3, 3 * seconds)
    }

    var value: Value { box.withLockedValue { $0 } }

    func contact() {
        box.withLockedValue {
            $0.lastContact = Date()
            $0.lastError = nil
        }
    }

    func failed(_ error: Error) {
        box.withLockedValue { $0.lastError = "\(error)" }
    }

    func streaming(_ open: Bool) {
        box.withLockedValue { $0.streaming = open }
    }

    func applied(version: UInt64) {
        box.withLockedValue { $0.registryVersion = version }
    }

    /// Seconds since the last contact (since `since` when there was none yet).
    func age(now: Date = Date(), since start: Date) -> TimeInterval {
        now.timeIntervalSince(value.lastContact ?? start)
    }

    func isStale(now: Date = Date(), since start: Date) -> Bool {
        let current = value
        return !current.streaming || age(now: now, since: start) > staleAfter
    }

    /// One line for `/ready`.
    func describe(now: Date = Date(), since start: Date) -> String {
        let current = value
        let age = Int(self.age(now: now, since: start).rounded())
        if !isStale(now: now, since: start) {
            return "control plane: connected, last contact \(age) s ago, registry version \(current.registryVersion)"
        }
        let why = current.lastError.map { " (last error: \($0.prefix(300)))" } ?? ""
        return "control plane: STALE, no answer for \(age) s\(why); serving registry version \(current.registryVersion) and the policies from then, renewing with backoff"
    }
}
