import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOPosix
import NIOSSL

/// The sidecar's composition root: identity, registration, registry watch, and the inbound,
/// outbound and admin listeners.
public struct Sidecar: Sendable {
    /// Settings of `mesh proxy`.
    public struct Configuration: Sendable {
        public var service: ServiceName
        public var app: HostPort
        public var inbound: HostPort
        public var outbound: HostPort
        public var admin: HostPort
        public var control: HostPort
        public var trustBundlePEM: String
        public var joinToken: String
        public var labels = Labels()
        /// Address other proxies should dial; empty means the control plane uses the source
        /// address of our connection.
        public var advertiseAddress = ""
        public var heartbeatInterval: Duration = .seconds(5)
        public var threads = 1
        public var limits = ProxyLimits()

        public init(service: ServiceName, app: HostPort, inbound: HostPort, outbound: HostPort, admin: HostPort,
                    control: HostPort, trustBundlePEM: String, joinToken: String) {
            self.service = service
            self.app = app
            self.inbound = inbound
            self.outbound = outbound
            self.admin = admin
            self.control = control
            self.trustBundlePEM = trustBundlePEM
            self.joinToken = joinToken
        }
    }

    /// Where a running sidecar listens (ports resolved).
    public struct Addresses: Sendable {
        public var inbound: HostPort
        public var outbound: HostPort
        public var admin: HostPort
    }

    public let configuration: Configuration
    public let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Joins the mesh, starts the listeners, calls `onReady`, and serves until cancelled;
    /// then deregisters, stops accepting and lets in-flight requests finish (bounded).
    public func run(onReady: @escaping @Sendable (Addresses) -> Void) async throws {
        let config = configuration
        let bundle = try TrustBundle(pem: config.trustBundlePEM)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, config.threads))
        let states = LoopStates(group: group, limits: config.limits)
        let readiness = Readiness()
        let logger = self.logger

        let identity = IdentityManager(service: config.service, control: config.control, bundle: bundle, group: group,
                                       logger: logger) { svid, bundle in
            do {
                let server = try MeshTLS.serverContext(svid: svid, bundle: bundle)
                let client = try MeshTLS.clientContext(svid: svid, bundle: bundle)
                await states.update { state in
                    state.serverTLS = server
                    state.clientTLS = client
                    state.bundle = bundle
                }
                readiness.svidNotAfter = svid.notAfter
            } catch {
                logger.error("cannot build TLS contexts from the new SVID; keeping the previous one", metadata: ["error": "\(error)"])
            }
        }
        let inbound = try await InboundListener.bind(config.inbound, app: config.app, group: group, states: states,
                                                     limits: config.limits, logger: logger)
        let outbound = try await OutboundListener.bind(config.outbound, trustDomain: bundle.trustDomain, group: group,
                                                       states: states, limits: config.limits, logger: logger)
        // Listeners first, so that a port conflict fails before the single-use token is spent.
        // Until the SVID arrives the inbound listener refuses every connection.
        do {
            try await identity.join(token: config.joinToken)
        } catch let error as MeshError {
            throw MeshError(error.code, "cannot join the mesh through \(config.control): \(error.message)")
        }

        let inboundPort = inbound.localAddress?.port ?? config.inbound.port
        let advertise = config.advertiseAddress.isEmpty && !["0.0.0.0", "::"].contains(config.inbound.host)
            ? config.inbound.host : config.advertiseAddress
        for (name, address) in [("outbound", config.outbound), ("admin", config.admin)] where !address.isLoopback {
            logger.warning("the \(name) listener is reachable beyond this host; keep it on loopback unless you mean it",
                           metadata: ["address": "\(address)"])
        }
        let registration = Registration(
            identity: identity,
            request: ControlAPI.RegisterRequest(instanceID: Self.makeInstanceID(config.service), address: advertise,
                                                inboundPort: inboundPort, labels: config.labels, certificateExpiry: nil),
            interval: config.heartbeatInterval, logger: logger)
        try await registration.register()
        let admin = try await APIServer.bind(config.admin, group: group, logger: logger) { request in
            AdminEndpoints.handle(request, readiness: readiness)
        }
        let addresses = Addresses(inbound: HostPort(host: config.inbound.host, port: inboundPort),
                                  outbound: HostPort(host: config.outbound.host, port: outbound.localAddress?.port ?? config.outbound.port),
                                  admin: admin.localAddress)

        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await identity.renewalLoop() }
            tasks.addTask { await registration.heartbeatLoop() }
            tasks.addTask {
                await RegistryWatcher(identity: identity, states: states, logger: logger) {
                    readiness.hasConfig = true
                    logger.info("proxy ready", metadata: ["service": "\(config.service)", "inbound": "\(addresses.inbound)",
                                                          "outbound": "\(addresses.outbound)", "admin": "\(addresses.admin)"])
                    onReady(addresses)
                }.run()
            }
            tasks.addTask { await admin.run() }
            // Wait for cancellation (SIGTERM), then stop the background loops.
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            tasks.cancelAll()
        }
        // The run was cancelled (SIGTERM); shut down in a task of its own so that the
        // deregistration call is not itself cancelled.
        let listeners = [inbound, outbound]
        await Task {
            await shutdown(registration: registration, listeners: listeners, admin: admin, states: states,
                           readiness: readiness)
        }.value
        try? await group.shutdownGracefully()
    }

    private func shutdown(registration: Registration, listeners: [Channel], admin: APIServer, states: LoopStates,
                          readiness: Readiness) async {
        readiness.draining = true
        await registration.deregister()
        for listener in listeners { try? await listener.close() }
        let deadline = ContinuousClock.now + configuration.limits.drainTimeout
        while ContinuousClock.now < deadline {
            let inFlight = await states.sum { $0.inFlight }
            if inFlight == 0 { break }
            try? await Task.sleep(for: .milliseconds(50))
        }
        await states.update { $0.pool.closeAll() }
        await admin.close()
        logger.info("proxy stopped")
    }

    static func makeInstanceID(_ service: ServiceName) -> String {
        let suffix = (0..<6).map { _ in String("abcdefghijklmnopqrstuvwxyz0123456789".randomElement() ?? "x") }.joined()
        let host = ProcessInfo.processInfo.hostName.prefix(24).filter { $0.isLetter || $0.isNumber || $0 == "-" }
        return "\(service)-\(host)-\(suffix)"
    }
}
