import Foundation
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOConcurrencyHelpers

/// What `/ready` reports: ready only with an SVID and a first registry snapshot, and not
/// while draining for shutdown.
final class Readiness: Sendable {
    private let box = NIOLockedValueBox((svidNotAfter: Date?.none, config: false, draining: false))

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
            return .text("ready\n")
        default:
            return .text("not found: try /ready, /live or /metrics\n", status: .notFound)
        }
    }
}
