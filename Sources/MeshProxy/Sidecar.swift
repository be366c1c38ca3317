import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTelemetry
import MeshTransport
import NIOCore
import NIOPosix
import NIOSSL

/// The sidecar's composition root: the inbound, outbound and admin listeners, fed with an
/// identity and a registry by a ``Sidecar/Source`` — the control plane, or static files for
/// users who bring their own PKI.
public struct Sidecar: Sendable {
    /// Where identity and endpoints come from.
    public enum Source: Sendable {
        /// Join the control plane with a token; renew there; follow its registry.
        case controlPlane(ControlPlaneSettings)
        /// SVID, key and bundle from PEM files (re-read when they change), endpoints from the
        /// configuration file. No control plane.
        case staticFiles(StaticSettings)
    }

    /// Settings of the control-plane source (`mesh proxy --control …`).
    public struct ControlPlaneSettings: Sendable {
        public var control: HostPort
        /// Further control plane replicas, used when `control` cannot be reached.
        public var alternates: [HostPort] = []
        public var trustBundlePEM: String
        /// Empty when the proxy restarts from its state directory.
        public var joinToken: String
        /// `--state-dir`: where the SVID and the last registry are kept (see ``ProxyState``).
        public var stateDirectory: String?
        public var heartbeatInterval: Duration = .seconds(5)
        /// Address other proxies should dial; empty means the control plane uses the source
        /// address of our connection.
        public var advertiseAddress = ""

        public init(control: HostPort, trustBundlePEM: String, joinToken: String) {
            self.control = control
            self.trustBundlePEM = trustBundlePEM
            self.joinToken = joinToken
        }
    }

    /// Settings of `mesh proxy`.
    public struct Configuration: Sendable {
        public var service: ServiceName
        public var app: HostPort
        public var inbound: HostPort
        public var outbound: HostPort
        public var admin: HostPort
        public var source: Source
        public var labels = Labels()
        /// `strict` (default): mTLS only. `permissive`: also plaintext callers from outside the
        /// mesh, as `unauthenticated` with their source address. A ServiceDefaults resource
        /// for the service overrides it.
        public var mtlsMode = "strict"
        public var threads = 1
        public var limits = ProxyLimits()
        /// `stdout` or a file for one JSON line per request; nil (the default): no access log.
        public var accessLog: String?
        /// OTLP/HTTP traces URL; nil (the default): no tracing.
        public var traceEndpoint: String?
        /// Share of new traces recorded when tracing is on.
        public var traceSampling = 0.01
        /// Request metrics on `/metrics` (on by default; off only to measure their cost).
        public var metricsEnabled = true
        /// What the app speaks: `http` (the default) or `tcp` (opaque: relayed byte for byte,
        /// authorized at L4; callers' proxies skip protocol detection).
        public var appProtocol = "http"
        /// Local ports bound to one service each (`--upstream db=127.0.0.1:15432`), for apps
        /// that cannot name the service in a `Host` header (databases, raw TCP).
        public var upstreams: [Upstream] = []
        /// Active health check of the app (`--health-check`); nil: none, the instance takes
        /// traffic while its proxy heartbeats.
        public var healthCheck: HealthCheck?

        public init(service: ServiceName, app: HostPort, inbound: HostPort, outbound: HostPort, admin: HostPort,
                    source: Source) {
            self.service = service
            self.app = app
            self.inbound = inbound
            self.outbound = outbound
            self.admin = admin
            self.source = source
        }
    }

    /// A local port bound to one service (`--upstream SERVICE=[HOST:]PORT`).
    public struct Upstream: Sendable, Equatable {
        public var service: ServiceName
        public var listen: HostPort
        public init(service: ServiceName, listen: HostPort) {
            self.service = service
            self.listen = listen
        }
    }

    /// Where a running sidecar listens (ports resolved).
    public struct Addresses: Sendable {
        public var inbound: HostPort
        public var outbound: HostPort
        public var admin: HostPort
        public var upstreams: [Upstream] = []
    }

    public let configuration: Configuration
    public let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Gets an identity, starts the listeners, calls `onReady` once there is a first
    /// registry, and serves until cancelled; then deregisters, stops accepting and lets
    /// in-flight requests finish (bounded).
    public func run(onReady: @escaping @Sendable (Addresses) -> Void) async throws {
        let config = configuration
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, config.threads))
        let states = LoopStates(group: group, limits: config.limits)
        let controlStatus: ControlStatus?
        if case .controlPlane(let settings) = config.source {
            controlStatus = ControlStatus(heartbeatInterval: settings.heartbeatInterval)
        } else {
            controlStatus = nil
        }
        let readiness = Readiness(control: controlStatus)
        let logger = self.logger
        let install: @Sendable (SVID, TrustBundle) async -> Void = { svid, bundle in
            do {
                let server = try MeshTLS.serverContext(svid: svid, bundle: bundle,
                                                       protocols: [MeshTLS.ALPN.http1, MeshTLS.ALPN.http2, MeshTLS.ALPN.opaque])
                let client = try MeshTLS.clientContext(svid: svid, bundle: bundle)
                let opaque = try MeshTLS.clientContext(svid: svid, bundle: bundle, protocols: [MeshTLS.ALPN.opaque])
                let http2 = try MeshTLS.clientContext(svid: svid, bundle: bundle, protocols: [MeshTLS.ALPN.http2])
                await states.update { state in
                    state.serverTLS = server
                    state.clientTLS = client
                    state.clientOpaqueTLS = opaque
                    state.clientH2TLS = http2
                    state.bundle = bundle
                }
                readiness.svidNotAfter = svid.notAfter
            } catch {
                logger.error("cannot build TLS contexts from the new SVID; keeping the previous one", metadata: ["error": "\(error)"])
            }
        }
        guard let mode = InboundListener.MTLSMode(rawValue: config.mtlsMode) else {
            throw MeshError(.invalidRequest, "mTLS mode must be strict or permissive, not '\(config.mtlsMode)'")
        }
        guard let appProtocol = InboundListener.AppProtocol(rawValue: config.appProtocol) else {
            throw MeshError(.invalidRequest, "the app protocol must be http or tcp, not '\(config.appProtocol)'")
        }
        let selfService = config.service
        let selfLabels = config.labels.values
        let metrics = ProxyMetrics()
        let accessLog: AccessLog?
        do {
            accessLog = try config.accessLog.map { try AccessLog(destination: $0, metrics: metrics) }
        } catch {
            throw MeshError(.invalidRequest, "\(error)")
        }
        defer { accessLog?.close() }
        let tracer: MeshTracer?
        do {
            tracer = try config.traceEndpoint.map {
                try MeshTracer(endpoint: $0, serviceName: config.service.rawValue, samplingRatio: config.traceSampling, logger: logger)
            }
        } catch {
            throw MeshError(.invalidRequest, "\(error)")
        }
        await states.update { state in
            state.selfService = selfService
            state.localLabels = selfLabels
            state.localMTLSMode = mode
            state.metrics = config.metricsEnabled ? metrics : nil
            state.accessLog = accessLog
            state.tracer = tracer
        }
        let checker = config.healthCheck.map { check in
            AppHealthChecker(check: check, app: config.app, health: AppHealth(), group: group, logger: logger) { [metrics] healthy in
                metrics.appHealthy().set(Double(healthy ? 1 : 0))
            }
        }
        let source: any SidecarSource
        switch config.source {
        case .controlPlane(let settings):
            source = try ControlPlaneSource(status: controlStatus ?? ControlStatus(heartbeatInterval: settings.heartbeatInterval),
                                            health: checker?.health, settings: settings, service: config.service, labels: config.labels,
                                            mtlsMode: mode.rawValue, appProtocol: appProtocol.rawValue, inboundHost: config.inbound.host, group: group, logger: logger, install: install)
        case .staticFiles(let settings):
            source = try StaticSource(settings: settings, service: config.service, logger: logger, install: install)
        }

        // Listeners first, so that a port conflict fails before a single-use token is spent.
        // Until the SVID arrives the inbound listener refuses every connection.
        if mode == .permissive {
            logger.warning("inbound accepts plaintext callers (permissive mTLS); policies decide what they may do")
        }
        let inbound = try await InboundListener.bind(config.inbound, app: config.app, appProtocol: appProtocol, group: group,
                                                     states: states, limits: config.limits, logger: logger)
        let outbound = try await OutboundListener.bind(config.outbound, group: group,
                                                       states: states, limits: config.limits, logger: logger)
        var upstreamChannels: [Channel] = []
        var boundUpstreams: [Upstream] = []
        for upstream in config.upstreams {
            let channel = try await UpstreamListener.bind(upstream, group: group, states: states, limits: config.limits, logger: logger)
            upstreamChannels.append(channel)
            boundUpstreams.append(Upstream(service: upstream.service,
                                           listen: HostPort(host: upstream.listen.host, port: channel.localAddress?.port ?? upstream.listen.port)))
        }
        let exposed = [("outbound", config.outbound), ("admin", config.admin)] + config.upstreams.map { ("upstream \($0.service)", $0.listen) }
        for (name, address) in exposed where !address.isLoopback {
            logger.warning("the \(name) listener is reachable beyond this host; keep it on loopback unless you mean it",
                           metadata: ["address": "\(address)"])
        }
        let inboundPort = inbound.localAddress?.port ?? config.inbound.port
        await checker?.start()
        try await source.start(inboundPort: inboundPort)
        let admin = try await APIServer.bind(config.admin, group: group, logger: logger) { request in
            AdminEndpoints.handle(request, readiness: readiness, metrics: metrics)
        }
        let addresses = Addresses(inbound: HostPort(host: config.inbound.host, port: inboundPort),
                                  outbound: HostPort(host: config.outbound.host, port: outbound.localAddress?.port ?? config.outbound.port),
                                  admin: admin.localAddress, upstreams: boundUpstreams)

        // The exporter runs outside the task group that SIGTERM cancels: spans of requests that
        // finish while draining are still exported by the graceful shutdown below.
        let exporter = tracer.map { tracer in Task { await tracer.run() } }
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                await source.run(states: states) {
                    readiness.hasConfig = true
                    logger.info("proxy ready", metadata: ["service": "\(config.service)", "inbound": "\(addresses.inbound)",
                                                          "outbound": "\(addresses.outbound)", "admin": "\(addresses.admin)"])
                    onReady(addresses)
                }
            }
            tasks.addTask { await admin.run() }
            if let checker { tasks.addTask { await checker.run() } }

            // Wait for cancellation (SIGTERM), then stop the background loops.
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            tasks.cancelAll()
        }
        // The run was cancelled (SIGTERM); shut down in a task of its own so that the
        // deregistration call is not itself cancelled.
        let listeners = [inbound, outbound] + upstreamChannels
        await Task {
            readiness.draining = true
            await source.stop()
            await drain(listeners: listeners, states: states)
            await tracer?.shutdown()
            await exporter?.value
            await admin.close()
            logger.info("proxy stopped")
        }.value
        try? await group.shutdownGracefully()
    }

    private func drain(listeners: [Channel], states: LoopStates) async {
        for listener in listeners { try? await listener.close() }
        let deadline = ContinuousClock.now + configuration.limits.drainTimeout
        await waitForIdle(states, until: deadline)
        // Nothing in flight: the connections callers keep alive close now, while the proxy
        // can still serve, so that no request arrives as it goes away (a caller's proxy sends
        // a request whose pooled connection closed unanswered again, on a new one). Then the
        // requests that slipped in meanwhile finish.
        await states.update { $0.closeDownstreams() }
        await waitForIdle(states, until: min(deadline, ContinuousClock.now + .seconds(1)))
        await states.update { $0.pool.closeAll() }
    }

    private func waitForIdle(_ states: LoopStates, until deadline: ContinuousClock.Instant) async {
        while ContinuousClock.now < deadline {
            let inFlight = await states.sum { $0.inFlight }
            if inFlight == 0 { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// Feeds a sidecar with its identity and registry.
protocol SidecarSource: Sendable {
    /// The trust domain of the mesh this proxy belongs to.
    var trustDomain: String { get }
    /// Obtains the first SVID and announces the instance; throws when that is impossible.
    func start(inboundPort: Int) async throws
    /// Keeps identity and registry current until cancelled; calls `onFirstRegistry` once.
    func run(states: LoopStates, onFirstRegistry: @escaping @Sendable () -> Void) async
    /// Leaves the mesh (deregistration) before the listeners close.
    func stop() async
}
