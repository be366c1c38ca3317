import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshPolicy

extension Sidecar {
    /// Settings of the static source (`mesh proxy --config FILE`): identity from PEM files
    /// issued by the user's own PKI (SPIRE, Vault, an enterprise CA), endpoints listed by hand.
    public struct StaticSettings: Sendable {
        public var certificateFile: String
        public var keyFile: String
        public var bundleFile: String
        /// Needed when the bundle's CA does not name its trust domain in a URI SAN.
        public var trustDomain: String?
        public var services: [ServiceName: [HostPort]]
        /// Authorization policies for this proxy's inbound side (default deny applies).
        public var policies = PolicySet()
        /// How often the PEM files are checked for a rotated certificate.
        public var reloadInterval: Duration = .seconds(5)

        public init(certificateFile: String, keyFile: String, bundleFile: String, trustDomain: String?,
                    services: [ServiceName: [HostPort]]) {
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.bundleFile = bundleFile
            self.trustDomain = trustDomain
            self.services = services
        }
    }
}

/// Static files as a sidecar's source. The files are re-read when they change, so an external
/// rotator (spiffe-helper, cert-manager, a cron job) can renew the SVID under a running proxy;
/// a bad new file is logged and the previous identity kept.
struct StaticSource: SidecarSource {
    let settings: Sidecar.StaticSettings
    let service: ServiceName
    let logger: Logger
    let install: @Sendable (SVID, TrustBundle) async -> Void
    let trustDomain: String

    init(settings: Sidecar.StaticSettings, service: ServiceName, logger: Logger,
         install: @escaping @Sendable (SVID, TrustBundle) async -> Void) throws {
        self.settings = settings
        self.service = service
        self.logger = logger
        self.install = install
        self.trustDomain = try Self.load(settings, service: service).bundle.trustDomain
        self.evaluator = try PolicyCompiler.compile(settings.policies)
    }

    let evaluator: PolicyEvaluator

    func start(inboundPort: Int) async throws {
        let (svid, bundle) = try Self.load(settings, service: service)
        await install(svid, bundle)
        logger.info("static identity loaded", metadata: ["spiffe_id": "\(svid.id)", "not_after": "\(svid.notAfter)"])
    }

    func run(states: LoopStates, onFirstRegistry: @escaping @Sendable () -> Void) async {
        var instances: [String: ServiceInstance] = [:]
        for (service, endpoints) in settings.services {
            for (index, endpoint) in endpoints.enumerated() {
                let id = "\(service)-static-\(index)"
                instances[id] = ServiceInstance(id: id, service: service, address: endpoint.host, inboundPort: endpoint.port,
                                                labels: Labels(), lastHeartbeat: Date(), certificateExpiry: nil)
            }
        }
        let snapshot = RegistrySnapshot(version: 1, instances: instances, services: Set(settings.services.keys),
                                        policies: settings.policies)
        let evaluator = self.evaluator
        await states.update { $0.setRegistry(snapshot, evaluator: evaluator) }
        onFirstRegistry()

        var stamp = Self.modificationStamp(settings)
        while !Task.isCancelled {
            try? await Task.sleep(for: settings.reloadInterval)
            let now = Self.modificationStamp(settings)
            guard now != stamp else { continue }
            stamp = now
            do {
                let (svid, bundle) = try Self.load(settings, service: service)
                await install(svid, bundle)
                logger.info("static identity reloaded", metadata: ["spiffe_id": "\(svid.id)", "not_after": "\(svid.notAfter)"])
            } catch {
                logger.error("the changed certificate files are not usable; keeping the previous identity",
                             metadata: ["error": "\(error)"])
            }
        }
    }

    func stop() async {}

    /// Reads and cross-checks the three files.
    static func load(_ settings: Sidecar.StaticSettings, service: ServiceName) throws -> (svid: SVID, bundle: TrustBundle) {
        func read(_ path: String, _ what: String) throws -> String {
            do { return try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw MeshError(.fileUnreadable, "cannot read the \(what) file \(path): \((error as NSError).localizedDescription)")
            }
        }
        let chain = try PEM.certificates(from: try read(settings.certificateFile, "certificate"))
        guard !chain.isEmpty else {
            throw MeshError(.invalidCertificate, "\(settings.certificateFile) holds no PEM certificate")
        }
        let key = try WorkloadKey(pem: try read(settings.keyFile, "key"))
        let svid = try SVID(chain: chain, key: key)
        let bundle = try TrustBundle(roots: try PEM.certificates(from: try read(settings.bundleFile, "trust bundle")),
                                     trustDomain: settings.trustDomain)
        guard svid.id.trustDomain == bundle.trustDomain else {
            throw MeshError(.invalidCertificate, "the SVID is for trust domain '\(svid.id.trustDomain)' but the bundle is for '\(bundle.trustDomain)'")
        }
        guard svid.id.service == service else {
            throw MeshError(.invalidCertificate, "the SVID names \(svid.id), not the workload identity of service '\(service)' (spiffe://\(bundle.trustDomain)/ns/default/sa/\(service))")
        }
        guard svid.notAfter > Date() else {
            throw MeshError(.invalidCertificate, "the SVID in \(settings.certificateFile) expired at \(svid.notAfter)")
        }
        return (svid, bundle)
    }

    private static func modificationStamp(_ settings: Sidecar.StaticSettings) -> [FileStamp?] {
        [settings.certificateFile, settings.keyFile, settings.bundleFile].map(FileStamp.init(path:))
    }
}

/// What tells that a file changed: a rewrite in place changes its size or times, a replacement
/// (a file renamed over it, or a symlink swapped the way Kubernetes swaps a mounted secret's
/// `..data`) its inode. Read with `stat`, which follows symlinks: FileManager's attributes
/// are those of the link itself, under which a rotation by symlink swap went unseen (and each
/// look also read `/etc/passwd` and `/etc/group` for the owner's names).
struct FileStamp: Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int
    var modifiedNanos: Int
    var changed: Int
    var changedNanos: Int

    /// nil when the file cannot be read (missing, a dangling link).
    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = Int(info.st_mtim.tv_sec)
        modifiedNanos = Int(info.st_mtim.tv_nsec)
        changed = Int(info.st_ctim.tv_sec)
        changedNanos = Int(info.st_ctim.tv_nsec)
    }
}
