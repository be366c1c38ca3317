import Logging
import MeshCore
import MeshTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Active health checking of the local app by its sidecar (`--health-check http:/healthz` or
/// `--health-check tcp`), as Consul's agent checks do: the proxy probes its own app and
/// reports the result to the control plane, which takes an unhealthy instance out of every
/// proxy's endpoint set until it recovers. The app is probed from the loopback side, so no
/// policy or mTLS is involved.
public struct HealthCheck: Sendable, Equatable {
    public enum Probe: Sendable, Equatable {
        /// `GET path` must answer 2xx or 3xx within the timeout.
        case http(path: String)
        /// A TCP connect must succeed within the timeout.
        case tcp
    }

    public var probe: Probe
    public var interval: Duration = .seconds(5)
    public var timeout: Duration = .seconds(1)
    /// Failures in a row that make a healthy app unhealthy (one blip is not an outage).
    public var unhealthyThreshold = 2
    /// Successes in a row that make an unhealthy app healthy again.
    public var healthyThreshold = 1

    public init(probe: Probe) {
        self.probe = probe
    }

    /// `tcp`, `http:/healthz`, `http:/` → a probe; anything else is an error that says what
    /// to write.
    public static func parse(_ text: String) throws -> Probe {
        if text == "tcp" { return .tcp }
        if text.hasPrefix("http:"), text.dropFirst(5).hasPrefix("/"),
           text.utf8.count <= 1024, !text.contains(where: { $0 == " " || $0.asciiValue.map { $0 < 0x20 } ?? false }) {
            return .http(path: String(text.dropFirst(5)))
        }
        throw MeshError(.invalidRequest, "a health check is 'tcp' or 'http:/PATH' (e.g. http:/healthz), not '\(text)'")
    }
}

/// The app's health as last decided (nil before the first probe), shared between the checker
/// and the registration, whose heartbeat loop reports a change within 100 ms.
public final class AppHealth: Sendable {
    private let box = NIOLockedValueBox<Bool?>(nil)

    public init() {}

    public var healthy: Bool? { box.withLockedValue { $0 } }

    func set(_ healthy: Bool) {
        box.withLockedValue { $0 = healthy }
    }
}

/// Probes the app every `interval` and applies the thresholds.
struct AppHealthChecker: Sendable {
    let check: HealthCheck
    let app: HostPort
    let health: AppHealth
    let group: EventLoopGroup
    let logger: Logger
    /// Called with 1 (healthy) or 0 after every decision (the `mesh_app_healthy` gauge).
    let report: @Sendable (Bool) -> Void

    /// The first probe, which decides at once: registration then carries a real state (an
    /// app that is not up yet gets no traffic until it is).
    func start() async {
        let (ok, why) = await probe()
        decide(ok, why: why)
    }

    /// Probes every `interval` until cancelled; decisions go through the thresholds.
    func run() async {
        var failures = 0
        var successes = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: check.interval)
            if Task.isCancelled { return }
            let (ok, why) = await probe()
            if ok {
                failures = 0
                successes += 1
                if health.healthy == false && successes >= check.healthyThreshold { decide(true, why: why) }
            } else {
                successes = 0
                failures += 1
                if health.healthy != false && failures >= check.unhealthyThreshold { decide(false, why: why) }
            }
        }
    }

    private func decide(_ healthy: Bool, why: String) {
        if health.healthy != healthy {
            if healthy {
                logger.notice("the app is healthy: it takes traffic", metadata: ["check": "\(why)"])
            } else {
                logger.warning("the app is unhealthy: callers stop sending it traffic until it recovers",
                               metadata: ["check": "\(why)"])
            }
        }
        health.set(healthy)
        report(healthy)
    }

    /// One probe: whether it passed, and what it saw.
    func probe() async -> (Bool, String) {
        let timeout = TimeAmount.nanoseconds(Int64(check.timeout.components.seconds) * 1_000_000_000
                                             + check.timeout.components.attoseconds / 1_000_000_000)
        switch check.probe {
        case .tcp:
            do {
                let channel = try await ClientBootstrap(group: group).connectTimeout(timeout)
                    .connect(host: app.host, port: app.port).get()
                try? await channel.close()
                return (true, "tcp connect to \(app) succeeded")
            } catch {
                return (false, "tcp connect to \(app) failed: \(error)")
            }
        case .http(let path):
            var client = APIClient(target: app, group: group, tls: nil)
            client.requestTimeout = check.timeout
            do {
                let response = try await client.get(path)
                let ok = (200..<400).contains(Int(response.status.code))
                return (ok, "GET \(path) answered \(response.status.code)")
            } catch {
                return (false, "GET \(path) failed: \(error)")
            }
        }
    }
}
