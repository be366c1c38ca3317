import Foundation
import MeshCore
import MeshIdentity
import MeshStore

/// `mesh check`: looks at the CA, the proxies' certificates and heartbeats, the replicas and
/// their clocks, the store and the default policy, and says what needs an operator, and what
/// to do about it. Each check adds `ok` when it found nothing, so the report shows what was
/// looked at.
struct MeshCheck: Sendable {
    let registry: Registry
    let authority: TrustAuthority
    let store: any MeshStore
    let svidLifetime: TimeInterval
    let heartbeatTTL: TimeInterval
    /// This replica's clock minus the store's (from its last report).
    let ownSkew: @Sendable () -> Double

    /// Roots this close to expiry are critical / a warning.
    static let rootCritical: TimeInterval = 30 * 86400
    static let rootWarning: TimeInterval = 180 * 86400
    /// Clocks further apart than this distort heartbeats, sweeps and certificate validity.
    static let skewWarning: TimeInterval = 1

    func run(now: Date = Date()) async -> CheckReport {
        var findings: [CheckReport.Finding] = []
        func add(_ severity: CheckReport.Severity, _ check: String, _ message: String) {
            findings.append(.init(severity: severity, check: check, message: message))
        }

        // The store.
        if let problem = await registry.storeError {
            add(.critical, "store", "the store does not answer (\(problem)): proxies keep their last configuration, changes are refused; bring the database back")
        } else {
            add(.ok, "store", "the store answers")
        }

        // Roots.
        let bundle = await authority.bundle
        for root in bundle.roots {
            let left = root.notValidAfter.timeIntervalSince(now)
            let name = TrustBundle.fingerprint(of: root)
            if left < Self.rootCritical {
                add(.critical, "roots", "root \(name) expires in \(Self.days(left)) (\(root.notValidAfter)); run 'mesh ca rotate' now")
            } else if left < Self.rootWarning {
                add(.warning, "roots", "root \(name) expires in \(Self.days(left)); plan 'mesh ca rotate'")
            } else {
                add(.ok, "roots", "root \(name) valid for \(Self.days(left))")
            }
        }

        // A rotation under way.
        let state = await authority.state
        let instances = Array(await registry.current.instances.values)
        if state.phase != .stable {
            let pending = await authority.pending(instances)
            let waited = Int(now.timeIntervalSince(state.since))
            let severity: CheckReport.Severity = waited > 600 ? .warning : .ok
            add(severity, "rotation", "CA rotation in phase \(state.phase.rawValue) for \(waited) s, waiting for \(pending.count) instance(s)\(pending.isEmpty ? "" : ": " + pending.prefix(5).map { "\($0.id) (\($0.waiting))" }.joined(separator: ", ")); see 'mesh ca status'")
        }

        // Proxies' SVIDs: renewal starts at half their life, so one with less than 40 % left
        // has failed to renew for a while.
        var svidProblems = 0
        for instance in instances.sorted(by: { $0.id < $1.id }) {
            guard let expiry = instance.certificateExpiry else { continue }
            let left = expiry.timeIntervalSince(now)
            if left <= 0 {
                add(.critical, "svids", "\(instance.id) (\(instance.service)) has an expired SVID (\(expiry)); restart its proxy with a new join token")
                svidProblems += 1
            } else if left < 0.4 * svidLifetime {
                add(.warning, "svids", "\(instance.id) (\(instance.service)): SVID expires in \(Int(left)) s and has not been renewed; check that proxy's log")
                svidProblems += 1
            }
        }
        if svidProblems == 0 { add(.ok, "svids", "\(instances.count) instance(s), every SVID renewed in time") }

        // Proxies that stopped heartbeating (still listed until the sweep).
        do {
            let stored = try await store.listInstances()
            let stale = stored.filter { now.timeIntervalSince($0.lastHeartbeat) > heartbeatTTL / 2 }
            for instance in stale.prefix(20) {
                add(.warning, "proxies", "\(instance.id) (\(instance.service)) last heartbeat \(Int(now.timeIntervalSince(instance.lastHeartbeat))) s ago; it leaves the registry after \(Int(heartbeatTTL)) s")
            }
            if stale.isEmpty { add(.ok, "proxies", "\(stored.count) instance(s) heartbeating") }
        } catch {
            add(.critical, "proxies", "cannot read the instances: \(error)")
        }

        // Replicas and clocks.
        do {
            let storeNow = now.addingTimeInterval(-ownSkew())
            let replicas = try await store.listReplicas()
            var replicaProblems = 0
            for replica in replicas {
                let age = storeNow.timeIntervalSince(replica.lastSeen)
                if age > 15 {
                    add(.warning, "replicas", "replica \(replica.id) (proxy API \(replica.listen), admin \(replica.admin)) last seen \(Int(age)) s ago: down or cut off from the database")
                    replicaProblems += 1
                } else if abs(replica.clockSkew) > Self.skewWarning {
                    add(.warning, "clock", "replica \(replica.id)'s clock is \(String(format: "%+.1f", replica.clockSkew)) s off the database's; fix its time sync (NTP): skew distorts heartbeats, sweeps and certificate validity")
                    replicaProblems += 1
                }
            }
            if replicaProblems == 0 { add(.ok, "replicas", "\(replicas.count) replica(s) reporting, clocks within \(Int(Self.skewWarning)) s") }
        } catch {
            add(.critical, "replicas", "cannot read the replicas: \(error)")
        }

        // The default policy.
        if await registry.current.policies.defaultMode == "audit" {
            add(.warning, "policy", "the default policy is audit: requests no policy allows pass (and are logged); switch to --default-policy deny once 'mesh denials' is quiet")
        } else {
            add(.ok, "policy", "default deny")
        }
        return CheckReport(findings: findings, checkedAt: now)
    }

    private static func days(_ seconds: TimeInterval) -> String {
        seconds <= 0 ? "0 days (expired)" : "\(Int(seconds / 86400)) days"
    }
}
