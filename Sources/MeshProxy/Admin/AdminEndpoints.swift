import Foundation
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOConcurrencyHelpers

/// What `/ready` reports: ready only with an SVID and a first registry snapshot, and not
/// while draining for shutdown.
final class Readiness: Sendable {
    private let box = NIOLockedValueBox((svidNotAfter: Date?.none, config: false, draining: false))
    /// How current the control plane's view is (nil in static mode).
    let control: ControlStatus?
    let started = Date()

    init(control: ControlStatus? = nil) { self.control = control }

    /// Expiry of the SVID in use; nil before the first one.
    var svidNotAfter: Date? {
        get { box.withLockedValue { $0.svidNotAfter } }
        set { box.withLockedValue { $0.svidNotAfter = newValue } }
    }
    var hasConfig: Bool {
        get { box.withLockedValue { $0.config } }
        set { box.withLockedValue { $0.config = newValue } }
    }
    var draining: Bool {
        get { box.withLockedValue { $0.draining } }
        set { box.withLockedValue { $0.draining = newValue } }
    }
}

/// The proxy's admin port: `/live` and `/ready` (more — metrics — comes with observability).
enum AdminEndpoints {
    static func handle(_ request: APIRequest, readiness: Readiness, metrics: ProxyMetrics) -> APIResponse {
        switch request.path {
        case "/metrics":
            if let control = readiness.control {
                let gauges = metrics.controlPlane()
                gauges.stale.set(Double(control.isStale(since: readiness.started) ? 1 : 0))
                gauges.contactAge.set(control.age(since: readiness.started))
                gauges.registryVersion.set(Double(control.value.registryVersion))
            }
            if let notAfter = readiness.svidNotAfter {
                metrics.svidExpiry().set(notAfter.timeIntervalSince1970)
            }
            return APIResponse(status: .ok, headers: ["content-type": "text/plain; version=0.0.4; charset=utf-8"],
                               body: .bytes(ByteBuffer(bytes: metrics.exposition())))
        case "/live":
            return .text("live\n")
        case "/ready":
            if readiness.draining { return .text("draining\n", status: .serviceUnavailable) }
            guard let notAfter = readiness.svidNotAfter else {
                return .text("not ready: no SVID yet\n", status: .serviceUnavailable)
            }
            if notAfter <= Date() {
                return .text("not ready: the SVID expired at \(notAfter) and could not be renewed; restart the proxy with a new join token\n",
                             status: .serviceUnavailable)
            }
            if !readiness.hasConfig { return .text("not ready: no registry from the control plane yet\n", status: .serviceUnavailable) }
            // Still ready when the control plane is gone: the proxy serves with what it has
            // (dropping every pod from load balancers because the control plane is down would
            // turn its outage into the mesh's). The details say how old that is.
            var details = "ready\nsvid: valid until \(notAfter)\n"
            if let control = readiness.control { details += control.describe(since: readiness.started) + "\n" }
            return .text(details)
        default:
            return .text("not found: try /ready, /live or /metrics\n", status: .notFound)
        }
    }
}
