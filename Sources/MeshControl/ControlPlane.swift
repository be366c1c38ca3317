import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshStore
import MeshTransport
import NIOConcurrencyHelpers
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
        /// Over how long proxies spread their renewals when a rotation switches to a new root.
        public var rotationRenewWindow: TimeInterval = 10
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
        let storage: any TrustStorage
        let adminToken: String
        if let url = config.storeURL {
            // Replicas share the store, and with it the CA and the admin token (sealed).
            guard let secret = config.storeSecret else {
                throw MeshError(.invalidRequest, "a PostgreSQL store keeps the CA key sealed with a secret of yours: pass --store-secret-file FILE or set MESH_STORE_SECRET (32+ random bytes, the same on every replica; make one with: head -c 32 /dev/urandom | base64 > store.secret && chmod 600 store.secret)")
            }
            store = try await PostgresStore.open(url: url, logger: logger)
            do {
                (storage, adminToken) = try await SharedTrust.load(store: store, secret: secret, directory: dir,
                                                                   trustDomain: config.trustDomain, logger: logger)
            } catch {
                await store.close()
                throw error
            }
        } else {
            storage = DirectoryTrustStorage(directory: dir, trustDomain: config.trustDomain)
            adminToken = try dir.loadOrCreateAdminToken()
            store = try await SQLiteStore.open(path: dir.sqliteFile.path, logger: logger)
        }
        defer { Task { await store.close() } }
        let registry = try await Registry.load(store: store, heartbeatTTL: config.heartbeatTTL, logger: logger,
                                               defaultPolicy: config.defaultPolicy)
        let tokens = JoinTokens(store: store)

        let authority = try await TrustAuthority.load(storage: storage, directory: dir, trustDomain: config.trustDomain, logger: logger,
                                                      renewWindow: config.rotationRenewWindow)
        await registry.setTrust(try await authority.update) { Task { await authority.refresh() } }
        let trustDomain = config.trustDomain

        let group = MultiThreadedEventLoopGroup.singleton
        let denials = DenialLog()
        let traffic = TrafficStore()
        let taps = TapHub()
        let proxyRoutes = ProxyAPIRoutes(authority: authority, trustDomain: trustDomain, tokens: tokens, registry: registry, denials: denials, traffic: traffic, taps: taps, svidLifetime: config.svidLifetime,
                                         watchKeepalive: config.watchKeepalive, logger: logger)
        let skew = NIOLockedValueBox(0.0)
        let check = MeshCheck(registry: registry, authority: authority, store: store, svidLifetime: config.svidLifetime,
                              heartbeatTTL: config.heartbeatTTL, ownSkew: { skew.withLockedValue { $0 } })
        let adminRoutes = AdminRoutes(adminToken: adminToken, tokens: tokens, registry: registry, denials: denials, traffic: traffic,
                                      taps: taps, trustDomain: trustDomain, authority: authority, check: check, logger: logger)
        if !config.admin.isLoopback {
            logger.warning("the admin API listens beyond loopback; every call still needs the admin token",
                           metadata: ["admin": "\(config.admin)"])
        }
        // Read per connection: a CA rotation replaces the control plane's certificate and bundle.
        let proxyAPI = try await APIServer.bind(config.listen, group: group, tls: { authority.serverTLS.withLockedValue { $0 } }, logger: logger,
                                                handler: proxyRoutes.handle)
        let adminAPI = try await APIServer.bind(config.admin, group: group, logger: logger, handler: adminRoutes.handle)
        onReady(Addresses(listen: proxyAPI.localAddress, admin: adminAPI.localAddress))
        logger.info("control plane ready", metadata: [
            "trust_domain": "\(trustDomain)", "listen": "\(proxyAPI.localAddress)", "admin": "\(adminAPI.localAddress)",
            "data_dir": "\(dir.path.path)"])

        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await proxyAPI.run() }
            tasks.addTask { await adminAPI.run() }
            tasks.addTask { await registry.follow(interval: config.resyncInterval) }
            tasks.addTask {
                // This replica, for `mesh check` on any of them (and its clock against the store's).
                let me = ReplicaInfo(id: "\(ProcessInfo.processInfo.hostName):\(proxyAPI.localAddress.port)",
                                     listen: proxyAPI.localAddress.description, admin: adminAPI.localAddress.description,
                                     lastSeen: Date(), clockSkew: 0)
                while !Task.isCancelled {
                    if let storeNow = try? await store.reportReplica(me) {
                        skew.withLockedValue { $0 = Date().timeIntervalSince(storeNow) }
                    }
                    try? await Task.sleep(for: .seconds(5))
                }
            }
            tasks.addTask {
                // Every replica re-reads the CA state at each resync (a trust event also makes it
                // re-read at once). The replica holding the CA duty moves a rotation on, one step
                // at a time, and announces the roots again whenever the last announcement is not
                // what the state says (a step saved whose event was lost to a store failure).
                var ticks = 0
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    ticks += 1
                    if ticks % 5 == 0 { await authority.refresh() }
                    guard await store.dutyHeldSince(.certificateAuthority) != nil else { continue }
                    do {
                        let instances = Array(await registry.current.instances.values)
                        if try await authority.advance(instances: instances) {
                            try await registry.announceTrust(try await authority.update)
                        } else if let announced = await registry.current.trust, try await announced != authority.update {
                            try await registry.announceTrust(try await authority.update)
                        }
                    } catch {
                        guard !Task.isCancelled else { break } // stopping, not failing
                        logger.warning("cannot move the CA rotation on; retrying", metadata: ["error": "\(error)"])
                    }
                }
            }
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
