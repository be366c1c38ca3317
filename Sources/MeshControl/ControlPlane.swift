import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshStore
import MeshTransport
import NIOCore
import NIOPosix
import X509

/// The control plane's composition root: CA, join tokens, registry and its two APIs.
public struct ControlPlane: Sendable {
    /// Settings of `mesh control`.
    public struct Configuration: Sendable {
        public var dataDirectory: String
        public var trustDomain = "mesh.local"
        public var listen = HostPort(host: "127.0.0.1", port: 7900)
        public var admin = HostPort(host: "127.0.0.1", port: 7901)
        public var svidLifetime: TimeInterval = 24 * 3600
        public var heartbeatTTL: TimeInterval = 15
        public var watchKeepalive: Duration = .seconds(10)
        /// Step of the per-service history behind the dashboard's charts (360 steps kept).
        public var historyStep: Duration = .seconds(10)
        /// What happens to a request no policy allows: `deny` (default) or `audit`.
        public var defaultPolicy = "deny"
        /// `postgres://…`: keep the registry, tokens and resources in PostgreSQL instead of
        /// the embedded SQLite file of the data directory.
        public var storeURL: String?
        /// Seals the CA key and the admin token in a shared (PostgreSQL) store; required with
        /// one, the same on every replica.
        public var storeSecret: StoreSecret?
        /// How often a replica reads the store's change log even without a notification.
        public var resyncInterval: Duration = .seconds(5)

        public init(dataDirectory: String) { self.dataDirectory = dataDirectory }
    }

    /// Where a running control plane listens (ports resolved).
    public struct Addresses: Sendable {
        public var listen: HostPort
        public var admin: HostPort
    }

    public let configuration: Configuration
    public let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Starts everything, calls `onReady` once both APIs listen, and serves until cancelled.
    public func run(onReady: @Sendable (Addresses) -> Void) async throws {
        let config = configuration
        let dir = DataDirectory(config.dataDirectory)
        try dir.prepare()
        guard ["deny", "audit"].contains(config.defaultPolicy) else {
            throw MeshError(.invalidRequest, "--default-policy must be deny or audit, not '\(config.defaultPolicy)'")
        }
        let store: any MeshStore
        let ca: CertificateAuthority
        let adminToken: String
        if let url = config.storeURL {
            // Replicas share the store, and with it the CA and the admin token (sealed).
            guard let secret = config.storeSecret else {
                throw MeshError(.invalidRequest, "a PostgreSQL store keeps the CA key sealed with a secret of yours: pass --store-secret-file FILE or set MESH_STORE_SECRET (32+ random bytes, the same on every replica; make one with: head -c 32 /dev/urandom | base64 > store.secret && chmod 600 store.secret)")
            }
            store = try await PostgresStore.open(url: url, logger: logger)
            do {
                (ca, adminToken) = try await SharedTrust.load(store: store, secret: secret, directory: dir,
                                                              trustDomain: config.trustDomain, logger: logger)
            } catch {
                await store.close()
                throw error
            }
        } else {
            ca = try dir.loadOrCreateCA(trustDomain: config.trustDomain)
            adminToken = try dir.loadOrCreateAdminToken()
            store = try await SQLiteStore.open(path: dir.sqliteFile.path, logger: logger)
        }
        defer { Task { await store.close() } }
        let registry = try await Registry.load(store: store, heartbeatTTL: config.heartbeatTTL, logger: logger,
                                               defaultPolicy: config.defaultPolicy)
        let tokens = JoinTokens(store: store)

        // The control plane's own SVID, in the system namespace that no join token can reach.
        // Re-issued on every start; long-lived because it is bound to this process.
        let key = WorkloadKey()
        let controlID = try SPIFFEID(trustDomain: ca.trustDomain, path: "/ns/\(SPIFFEID.systemNamespace)/sa/control")
        let leaf = try ca.sign(csrPEM: try key.csrPEM(service: ServiceName("control")), as: controlID, lifetime: 365 * 86400)
        let svid = try SVID(chain: [leaf], key: key)
        let bundle = try TrustBundle(roots: [ca.certificate])
        let tls = APIServer.TLS(
            context: try MeshTLS.serverContext(svid: svid, bundle: bundle, clientCertificate: .optional),
            verifier: SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth))

        let group = MultiThreadedEventLoopGroup.singleton
        let denials = DenialLog()
        let traffic = TrafficStore()
        let taps = TapHub()
        let proxyRoutes = ProxyAPIRoutes(ca: ca, tokens: tokens, registry: registry, denials: denials, traffic: traffic, taps: taps, svidLifetime: config.svidLifetime,
                                         watchKeepalive: config.watchKeepalive, logger: logger)
        let adminRoutes = AdminRoutes(adminToken: adminToken, tokens: tokens, registry: registry, denials: denials, traffic: traffic,
                                      taps: taps, trustDomain: ca.trustDomain, logger: logger)
        if !config.admin.isLoopback {
            logger.warning("the admin API listens beyond loopback; every call still needs the admin token",
                           metadata: ["admin": "\(config.admin)"])
        }
        let proxyAPI = try await APIServer.bind(config.listen, group: group, tls: { tls }, logger: logger,
                                                handler: proxyRoutes.handle)
        let adminAPI = try await APIServer.bind(config.admin, group: group, logger: logger, handler: adminRoutes.handle)
        onReady(Addresses(listen: proxyAPI.localAddress, admin: adminAPI.localAddress))
        logger.info("control plane ready", metadata: [
            "trust_domain": "\(ca.trustDomain)", "listen": "\(proxyAPI.localAddress)", "admin": "\(adminAPI.localAddress)",
            "data_dir": "\(dir.path.path)"])

        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await proxyAPI.run() }
            tasks.addTask { await adminAPI.run() }
            tasks.addTask { await registry.follow(interval: config.resyncInterval) }
            tasks.addTask {
                let interval = max(0.2, config.heartbeatTTL / 4)
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(interval))
                    await registry.sweep()
                }
            }
            tasks.addTask {
                let step = config.historyStep
                while !Task.isCancelled {
                    try? await Task.sleep(for: step)
                    let services = await registry.current.services.map(\.rawValue)
                    await traffic.recordHistory(services: services)
                }
            }
            tasks.addTask {
                // Tap status lines every 2 s; orders renewed every 10 s (proxies keep them 30 s).
                var ticks = 0
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(2))
                    ticks += 1
                    await taps.tick(renew: ticks % 5 == 0)
                }
            }
            tasks.addTask {
                // Close the listeners when the run is cancelled (SIGTERM), ending the group.
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
                await proxyAPI.close()
                await adminAPI.close()
            }
            await tasks.next()
            tasks.cancelAll()
        }
        logger.info("control plane stopped")
    }
}
