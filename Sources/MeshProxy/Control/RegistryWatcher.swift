import Foundation
import Logging
import MeshCore
import MeshTransport
import MeshPolicy

/// Follows the control plane's registry stream and pushes every new snapshot to the data
/// path. Reconnects with backoff, resuming from the last version it applied, so a restart
/// of the control plane costs at most one snapshot per proxy.
struct RegistryWatcher: Sendable {
    let identity: IdentityManager
    let states: LoopStates
    /// This proxy's service, whose central settings are logged when they change.
    let service: ServiceName
    /// Set while a tap of this service is open, for the ``TapReporter``.
    let tapping: TapSwitch
    /// Told when the stream opens and closes and what version is in force.
    let status: ControlStatus
    /// The registry saved by an earlier run, served until the control plane answers.
    let initial: RegistrySnapshot?
    /// Where every applied registry is saved (`--state-dir`).
    let state: ProxyState?
    let logger: Logger
    /// Called once, when the first complete view has been applied.
    let onFirstSnapshot: @Sendable () -> Void

    func run() async {
        let box = SnapshotBox()
        if let initial {
            await apply(initial, to: box)
        }
        while !Task.isCancelled {
            do {
                let since = box.snapshot.version
                let client = try await identity.controlClient()
                let path = ControlAPI.watchPath + (since > 0 ? "?since=\(since)" : "")
                // The control plane sends a keepalive line every 10 s; three missed ones mean
                // the connection is dead even if TCP has not noticed.
                try await client.streamLines(path, readTimeout: .seconds(35), onKeepalive: {
                    status.streaming(true)
                    status.contact()
                }) { line in
                    status.streaming(true)
                    status.contact()
                    let event: RegistryEvent
                    do {
                        event = try JSONCoding.decoder.decode(RegistryEvent.self, from: Data(line.utf8))
                    } catch DecodingError.dataCorrupted(let context) where context.debugDescription.hasPrefix("unknown registry event type") {
                        // A newer control plane's message this proxy does not know: not a
                        // reason to drop the stream (and with it every registry update).
                        logger.debug("skipped a watch message of an unknown type", metadata: ["detail": "\(context.debugDescription)"])
                        return
                    }
                    if case .tap(let orders) = event.kind {
                        let loops = states.count
                        await states.update { $0.setTaps(orders, loops: loops) }
                        tapping.set(!orders.isEmpty)
                        logger.info(orders.isEmpty ? "tap ended" : "tapped (mesh tap)", metadata: ["taps": "\(orders.count)"])
                        return
                    }
                    var next = box.snapshot
                    next.apply(event)
                    // A CA rotation step: new roots, maybe a renewal onto the new signer.
                    if let trust = next.trust, trust != box.snapshot.trust {
                        await identity.apply(trust: trust)
                    }
                    guard next != box.snapshot || box.first else { return }
                    await apply(next, to: box)
                    box.attempt = 0
                }
                status.streaming(false)
                logger.info("registry stream ended; reconnecting")
            } catch {
                status.streaming(false)
                if Task.isCancelled { return }
                status.failed(error)
                logger.warning("registry stream failed; serving on the last known registry",
                               metadata: ["error": "\(error)", "version": "\(box.snapshot.version)"])
            }
            box.attempt += 1
            let delay = min(5.0, 0.2 * pow(2.0, Double(min(box.attempt, 6)))) * Double.random(in: 0.5...1.0)
            try? await Task.sleep(for: .seconds(delay))
        }
    }

    /// Installs `next` in every loop (compiling its policies when they changed) and saves it.
    private func apply(_ next: RegistrySnapshot, to box: SnapshotBox) async {
        let policiesChanged = next.policies != box.snapshot.policies || box.first
        box.snapshot = next
        let frozen = next
        var evaluator: PolicyEvaluator?
        if policiesChanged {
            do {
                evaluator = try PolicyCompiler.compile(next.policies)
            } catch {
                // The control plane validates on apply, so this means a version skew;
                // keep enforcing the previous set rather than widening access.
                logger.error("cannot compile the policies from the control plane; keeping the previous ones",
                             metadata: ["error": "\(error)"])
            }
        }
        let compiled = evaluator
        let central = next.policies.defaults(for: service)
        if central != box.central || (box.first && central != nil) {
            box.central = central
            logger.notice("central settings for this service applied (ServiceDefaults); they override the proxy's flags",
                          metadata: ["mtls": "\(central?.mtls ?? "(flag)")",
                                     "labels": "\((central?.labels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))"])
        }
        await states.update { $0.setRegistry(frozen, evaluator: compiled) }
        status.applied(version: frozen.version)
        if box.first {
            box.first = false
            onFirstSnapshot()
        }
        do {
            try state?.save(registry: frozen)
        } catch {
            logger.warning("cannot save the registry in the state directory", metadata: ["error": "\(error)"])
        }
    }
}

/// The watcher's own copy of the registry; only touched by the watcher's task.
private final class SnapshotBox: @unchecked Sendable {
    var snapshot = RegistrySnapshot()
    var first = true
    var attempt = 0
    var central: ServiceDefaults.Spec?
}
