import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOConcurrencyHelpers
import X509

/// The control plane's CA as it is now — which root signs, which roots proxies trust, the
/// control plane's own TLS — and the root rotation (`mesh ca rotate`):
///
/// 1. `adding`: a new root joins every bundle; the old root still signs.
/// 2. `signing`: once every registered proxy reports both roots, the new root signs, and
///    proxies renew onto it (spread over `renewWindow`).
/// 3. `retiring`: once every proxy's SVID chains to the new root, the old root leaves the
///    bundles.
/// 4. `stable` again once every proxy reports the bundle without it.
///
/// No proxy ever sees a certificate from a root it does not trust yet, so no connection
/// fails. Each step also waits `minimumStep` so that every replica has taken the previous
/// one (replicas learn of a step from the registry log at once, and re-read the state every
/// 5 s in any case). The replica holding the CA duty moves the rotation on; any replica may start it.
actor TrustAuthority {
    private(set) var state: TrustState
    private var signer: CertificateAuthority
    private(set) var bundle: TrustBundle
    /// The proxy API's TLS (its certificate signed by the current signer), read per connection.
    nonisolated let serverTLS: NIOLockedValueBox<APIServer.TLS>
    private let storage: any TrustStorage
    private let directory: DataDirectory
    private let trustDomain: String
    private let logger: Logger
    let renewWindow: TimeInterval
    let minimumStep: TimeInterval

    static func load(storage: any TrustStorage, directory: DataDirectory, trustDomain: String, logger: Logger,
                     renewWindow: TimeInterval = 10, minimumStep: TimeInterval = 2) async throws -> TrustAuthority {
        let state = try await storage.load()
        let (signer, bundle) = try parts(of: state, trustDomain: trustDomain)
        let tls = try makeServerTLS(signer: signer, bundle: bundle)
        try directory.writeBundle(try bundle.pem)
        return TrustAuthority(state: state, signer: signer, bundle: bundle, tls: tls, storage: storage, directory: directory,
                              trustDomain: trustDomain, logger: logger, renewWindow: renewWindow, minimumStep: minimumStep)
    }

    private init(state: TrustState, signer: CertificateAuthority, bundle: TrustBundle, tls: APIServer.TLS, storage: any TrustStorage,
                 directory: DataDirectory, trustDomain: String, logger: Logger, renewWindow: TimeInterval, minimumStep: TimeInterval) {
        self.state = state
        self.signer = signer
        self.bundle = bundle
        self.serverTLS = NIOLockedValueBox(tls)
        self.storage = storage
        self.directory = directory
        self.trustDomain = trustDomain
        self.logger = logger
        self.renewWindow = renewWindow
        self.minimumStep = minimumStep
    }

    private static func parts(of state: TrustState, trustDomain: String) throws -> (CertificateAuthority, TrustBundle) {
        guard state.roots.indices.contains(state.signing) else {
            throw MeshError(.storeFailure, "the trust state names signing root \(state.signing) of \(state.roots.count); the store is damaged")
        }
        let authorities = try state.roots.map { try CertificateAuthority(certificatePEM: $0.certificatePEM, privateKeyPEM: $0.key) }
        let signer = authorities[state.signing]
        guard signer.trustDomain == trustDomain else {
            throw MeshError(.invalidRequest, "the mesh's CA (in the data directory or the store) is for trust domain '\(signer.trustDomain)', not '\(trustDomain)'; pass --trust-domain \(signer.trustDomain), or use another --data-dir or database")
        }
        return (signer, try TrustBundle(roots: authorities.map(\.certificate), trustDomain: trustDomain))
    }

    /// The control plane's own SVID, in the system namespace no join token reaches, signed by
    /// the current signer; re-made whenever the signer or the bundle changes.
    private static func makeServerTLS(signer: CertificateAuthority, bundle: TrustBundle) throws -> APIServer.TLS {
        let key = WorkloadKey()
        let controlID = try SPIFFEID(trustDomain: signer.trustDomain, path: "/ns/\(SPIFFEID.systemNamespace)/sa/control")
        let leaf = try signer.sign(csrPEM: try key.csrPEM(service: ServiceName("control")), as: controlID, lifetime: 365 * 86400)
        let svid = try SVID(chain: [leaf], key: key)
        return APIServer.TLS(context: try MeshTLS.serverContext(svid: svid, bundle: bundle, clientCertificate: .optional),
                             verifier: SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth))
    }

    func sign(csrPEM: String, as id: SPIFFEID, lifetime: TimeInterval) throws -> Certificate {
        try signer.sign(csrPEM: csrPEM, as: id, lifetime: lifetime)
    }

    var signerCertificate: Certificate { signer.certificate }

    /// What proxies are sent: every root, and which one signs.
    var update: TrustUpdate {
        get throws {
            TrustUpdate(bundlePEM: try bundle.pem, signingRoot: TrustBundle.fingerprint(of: signer.certificate), renewWithin: renewWindow)
        }
    }

    /// Re-reads the state (another replica moved the rotation on); rebuilds what depends on it.
    func refresh() async {
        do {
            let next = try await storage.load()
            guard next != state else { return }
            try install(next)
        } catch {
            guard !Task.isCancelled else { return } // stopping, not failing
            logger.warning("cannot re-read the CA state; keeping the current one", metadata: ["error": "\(error)"])
        }
    }

    private func install(_ next: TrustState) throws {
        let (nextSigner, nextBundle) = try Self.parts(of: next, trustDomain: trustDomain)
        let changed = nextSigner.certificate != signer.certificate || nextBundle.fingerprints != bundle.fingerprints
        state = next
        signer = nextSigner
        bundle = nextBundle
        if changed {
            let tls = try Self.makeServerTLS(signer: nextSigner, bundle: nextBundle)
            serverTLS.withLockedValue { $0 = tls }
            try directory.writeBundle(try nextBundle.pem)
        }
        logger.notice("CA state", metadata: ["phase": "\(next.phase.rawValue)", "roots": "\(nextBundle.fingerprints.joined(separator: ","))",
                                             "signing": "\(TrustBundle.fingerprint(of: nextSigner.certificate))"])
    }

    /// Starts a rotation: a new root joins the bundle. Refused while one is under way.
    func startRotation(now: Date = Date()) async throws {
        await refresh()
        guard state.phase == .stable else {
            throw MeshError(.invalidRequest, "a CA rotation is already under way (phase \(state.phase.rawValue)); follow it with 'mesh ca status'")
        }
        let next = try CertificateAuthority.create(trustDomain: trustDomain, now: now)
        var moved = state
        moved.roots.append(TrustState.Root(certificatePEM: try next.certificatePEM, key: try next.privateKeyPEM))
        moved.phase = .adding
        moved.since = now
        try await replace(with: moved)
    }

    /// Moves the rotation one step on when every registered proxy has reported the current one
    /// done and `minimumStep` has passed; true when it moved (the caller announces the new roots).
    func advance(instances: [ServiceInstance], now: Date = Date()) async throws -> Bool {
        await refresh()
        guard state.phase != .stable, now.timeIntervalSince(state.since) >= minimumStep,
              pending(instances).isEmpty else { return false }
        var moved = state
        moved.since = now
        switch state.phase {
        case .stable:
            return false
        case .adding:
            moved.signing = moved.roots.count - 1
            moved.phase = .signing
        case .signing:
            moved.roots = [moved.roots[moved.signing]]
            moved.signing = 0
            moved.phase = .retiring
        case .retiring:
            moved.phase = .stable
        }
        try await replace(with: moved)
        return true
    }

    /// The instances the current phase waits for, with what they still lack.
    func pending(_ instances: [ServiceInstance]) -> [(id: String, waiting: String)] {
        let roots = bundle.fingerprints
        let signing = TrustBundle.fingerprint(of: signer.certificate)
        return instances.sorted { $0.id < $1.id }.compactMap { instance in
            switch state.phase {
            case .stable:
                return nil
            case .adding, .retiring:
                return Set(instance.trustRoots ?? []) == Set(roots) ? nil : (instance.id, "trust bundle update")
            case .signing:
                return instance.certificateRoot == signing ? nil : (instance.id, "SVID renewal with the new root")
            }
        }
    }

    private func replace(with next: TrustState) async throws {
        guard try await storage.replace(state, with: next) else {
            await refresh()
            throw MeshError(.invalidRequest, "another control plane replica changed the CA state meanwhile; check 'mesh ca status' and try again")
        }
        // Read back what was stored (dates as stored), so that the next swap compares equal.
        try install(try await storage.load())
    }
}
