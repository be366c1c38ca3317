import Foundation
import Logging
import MeshCore
import MeshTransport

/// Keeps this instance registered: registers, heartbeats, registers again when the control
/// plane forgot it (restart with a swept registry, partition), and deregisters on shutdown.
struct Registration: Sendable {
    let identity: IdentityManager
    let request: ControlAPI.RegisterRequest
    let interval: Duration
    /// The app's health, when the proxy checks it.
    let health: AppHealth?
    /// Told of every answer and failure, for `/ready` and metrics.
    let status: ControlStatus
    let logger: Logger

    func register() async throws {
        var body = request
        body.certificateExpiry = await identity.svid?.notAfter
        body.appHealthy = health?.healthy
        _ = try await identity.controlClient().send(.POST, ControlAPI.registerPath, json: body).decode(ServiceInstance.self)
    }

    /// Registers, retrying with backoff (0.2 s doubling to 5 s) until it succeeds or the task
    /// is cancelled; a control plane that refuses says why in the log.
    func registerUntilDone() async {
        var delay = 0.2
        while !Task.isCancelled {
            do {
                try await register()
                return
            } catch {
                logger.warning("cannot register with the control plane yet; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
                delay = min(delay * 2, 5)
            }
        }
    }

    /// Heartbeats until cancelled; never throws (a dead control plane is logged, not fatal).
    /// The one sender of heartbeats (so reports never overtake each other): every `interval`,
    /// and within 100 ms of a change of the app's health. While the control plane does not
    /// answer, the wait grows to twice the interval, with jitter, so that a fleet of proxies
    /// does not fall on a recovering control plane in step; no further, because a recovered
    /// control plane expires instances that stay silent past its grace (a TTL + 10 s).
    func heartbeatLoop() async {
        var registered = true
        var reported = health?.healthy
        var failures = 0
        while !Task.isCancelled {
            let wait = failures == 0 ? interval : interval * Double.random(in: 1.0...2.0)
            let due = ContinuousClock.now + wait
            while ContinuousClock.now < due, !Task.isCancelled, health?.healthy == reported {
                try? await Task.sleep(for: min(.milliseconds(100), due - ContinuousClock.now))
            }
            if Task.isCancelled { return }
            reported = health?.healthy
            do {
                if !registered {
                    try await register()
                    registered = true
                    logger.info("registered again with the control plane")
                    continue
                }
                let trust = await identity.trustReport
                let body = ControlAPI.HeartbeatRequest(instanceID: request.instanceID,
                                                       certificateExpiry: await identity.svid?.notAfter, appHealthy: health?.healthy,
                                                       trustRoots: trust.roots, certificateRoot: trust.certificateRoot)
                let response = try await identity.controlClient().send(.POST, ControlAPI.heartbeatPath, json: body)
                if response.status == .notFound {
                    registered = false
                    try await register()
                    registered = true
                } else {
                    _ = try response.decode([String: Bool].self)
                }
                status.contact()
                if failures > 0 { logger.notice("the control plane answers again") }
                failures = 0
            } catch {
                if Task.isCancelled { return }
                registered = false
                failures += 1
                status.failed(error)
                logger.warning("heartbeat failed; serving on the last known configuration", metadata: ["error": "\(error)"])
            }
        }
    }

    func deregister() async {
        do {
            let body = ControlAPI.HeartbeatRequest(instanceID: request.instanceID, certificateExpiry: nil)
            var client = try await identity.controlClient()
            client.requestTimeout = .seconds(2)
            _ = try await client.send(.POST, ControlAPI.deregisterPath, json: body).decode([String: Bool].self)
            logger.info("deregistered from the control plane")
        } catch {
            logger.warning("could not deregister; the control plane will expire this instance", metadata: ["error": "\(error)"])
        }
    }
}
