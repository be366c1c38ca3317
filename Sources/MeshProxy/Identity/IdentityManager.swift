import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import X509

/// Holds the proxy's SVID: obtains the first one with a join token, renews it at half its
/// life over mTLS authenticated by the current one, and keeps serving on the old one while
/// renewal fails and it is still valid. A fresh key is generated for every renewal; keys
/// never leave the process.
actor IdentityManager {
    private(set) var svid: SVID?
    /// When the current SVID arrived. Renewal is timed from here, not from `notBefore`,
    /// which the CA backdates for clock skew.
    private var installedAt = Date()
    private(set) var bundle: TrustBundle
    let service: ServiceName
    /// The control plane replicas; calls go to the one that last answered.
    private let control: HostPort
    private let alternates: [HostPort]
    private let preference: TargetPreference
    private let group: EventLoopGroup
    private let schedule: RenewalSchedule
    private let logger: Logger
    private let clock: @Sendable () -> Date
    /// Called after every change of SVID or bundle, to push new TLS contexts to the data path.
    private let onChange: @Sendable (SVID, TrustBundle) async -> Void
    /// Where every new SVID is saved (`--state-dir`), for a restart without the control plane.
    private let state: ProxyState?

    init(service: ServiceName, control: HostPort, alternates: [HostPort] = [], bundle: TrustBundle, group: EventLoopGroup,
         schedule: RenewalSchedule = RenewalSchedule(), logger: Logger,
         clock: @escaping @Sendable () -> Date = { Date() }, state: ProxyState? = nil,
         onChange: @escaping @Sendable (SVID, TrustBundle) async -> Void) {
        self.state = state
        self.service = service
        self.control = control
        self.alternates = alternates
        self.preference = TargetPreference { from, to in
            logger.warning("control plane replica unreachable or unavailable; moving to the next",
                           metadata: ["from": "\(from)", "to": "\(to)"])
        }
        self.bundle = bundle
        self.group = group
        self.schedule = schedule
        self.logger = logger
        self.clock = clock
        self.onChange = onChange
    }

    /// The identity the control plane must prove.
    var controlIdentity: SPIFFEID {
        get throws { try SPIFFEID(trustDomain: bundle.trustDomain, path: "/ns/\(SPIFFEID.systemNamespace)/sa/control") }
    }

    /// A client for the control plane, presenting the current SVID when there is one.
    func controlClient() throws -> APIClient {
        let context = try MeshTLS.clientContext(svid: svid, bundle: bundle)
        let verifier = SPIFFEPeerVerifier(bundle: bundle, expected: [try controlIdentity], usage: .serverAuth)
        var client = APIClient(target: control, group: group, tls: APIClient.TLS(context: context, verifier: verifier))
        client.alternates = alternates
        client.preference = preference
        return client
    }

    /// First certificate, with a single-use join token.
    func join(token: String) async throws {
        let key = WorkloadKey()
        let request = ControlAPI.JoinRequest(token: token, csrPEM: try key.csrPEM(service: service))
        var client = try controlClient()
        // A join that reached a replica may have spent the token: never sent twice.
        client.retryAfterSend = false
        let response = try await client.send(.POST, ControlAPI.joinPath, json: request)
            .decode(ControlAPI.CertificateResponse.self)
        try await install(response, key: key)
    }

    /// Renews with a CSR for a new key, authenticated by the current SVID.
    func renew() async throws {
        let key = WorkloadKey()
        let request = ControlAPI.RenewRequest(csrPEM: try key.csrPEM(service: service))
        let response = try await controlClient().send(.POST, ControlAPI.renewPath, json: request)
            .decode(ControlAPI.CertificateResponse.self)
        try await install(response, key: key)
    }

    private func install(_ response: ControlAPI.CertificateResponse, key: WorkloadKey) async throws {
        let chain = try PEM.certificates(from: response.certificateChainPEM)
        let newSVID = try SVID(chain: chain, key: key)
        let expected = try SPIFFEID(trustDomain: bundle.trustDomain, service: service)
        guard newSVID.id == expected else {
            throw MeshError(.invalidCertificate, "the control plane issued \(newSVID.id), expected \(expected)")
        }
        var newBundle = try TrustBundle(pem: response.trustBundlePEM)
        guard newBundle.trustDomain == bundle.trustDomain else {
            throw MeshError(.invalidCertificate, "the control plane sent a bundle for another trust domain")
        }
        // During a CA rotation the roots from the registry stream are the authority: a renewal
        // answered by a replica that has not taken the latest step must not undo it.
        if let latestTrust, let announced = try? TrustBundle(pem: latestTrust.bundlePEM), announced.trustDomain == bundle.trustDomain {
            newBundle = announced
        }
        svid = newSVID
        bundle = newBundle
        installedAt = clock()
        logger.info("SVID installed", metadata: ["spiffe_id": "\(newSVID.id)", "not_after": "\(newSVID.notAfter)"])
        await onChange(newSVID, newBundle)
        do {
            try state?.save(svid: newSVID, bundle: newBundle)
        } catch {
            logger.warning("cannot save the SVID in the state directory; a restart will need the control plane", metadata: ["error": "\(error)"])
        }
    }

    /// What heartbeats report for a CA rotation: the roots trusted, and the root the SVID
    /// chains to (fingerprints).
    var trustReport: (roots: [String], certificateRoot: String?) {
        (bundle.fingerprints, svid.flatMap { bundle.root(of: $0.leaf) }.map(TrustBundle.fingerprint(of:)))
    }

    private var scheduledRenewal: Task<Void, Never>?
    /// The last roots announced on the registry stream (a CA rotation step).
    private var latestTrust: TrustUpdate?

    /// A step of a CA rotation from the registry stream: takes the new bundle (TLS contexts
    /// rebuilt, saved), and renews onto the signing root, at a random moment within the window,
    /// when the SVID chains to another one.
    func apply(trust update: TrustUpdate) async {
        latestTrust = update
        do {
            let next = try TrustBundle(pem: update.bundlePEM)
            guard next.trustDomain == bundle.trustDomain else {
                logger.error("the control plane sent roots for another trust domain; ignored", metadata: ["trust_domain": "\(next.trustDomain)"])
                return
            }
            if next.fingerprints != bundle.fingerprints {
                logger.notice("trust bundle updated", metadata: ["roots": "\(next.fingerprints.joined(separator: ","))"])
                if let svid {
                    // The data path first: heartbeats report the new roots only once the TLS
                    // contexts hold them.
                    await onChange(svid, next)
                }
                bundle = next
                if let current = svid {
                    do { try state?.save(svid: current, bundle: next) } catch {
                        logger.warning("cannot save the trust bundle in the state directory", metadata: ["error": "\(error)"])
                    }
                }
            }
        } catch {
            logger.error("the control plane sent a trust bundle that does not parse; keeping the current one", metadata: ["error": "\(error)"])
            return
        }
        guard trustReport.certificateRoot != update.signingRoot, scheduledRenewal == nil else { return }
        let delay = Double.random(in: 0...max(0, update.renewWithin))
        logger.info("renewing the SVID with the mesh's new signing root", metadata: ["in_s": "\(Int(delay))"])
        scheduledRenewal = Task {
            try? await Task.sleep(for: .seconds(delay))
            await self.renewForRotation()
        }
    }

    /// Renews until the SVID chains to the announced signing root (a replica that has not
    /// taken the step yet may still sign with the old one).
    private func renewForRotation() async {
        var attempt = 0
        while !Task.isCancelled {
            if let signing = latestTrust?.signingRoot, trustReport.certificateRoot == signing { break }
            do {
                try await renew()
                if let signing = latestTrust?.signingRoot, trustReport.certificateRoot != signing {
                    throw MeshError(.unavailable, "the renewed SVID still chains to the old root")
                }
                break
            } catch {
                attempt += 1
                logger.warning("SVID renewal for the CA rotation failed; retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try? await Task.sleep(for: .seconds(min(5.0, 0.5 * Double(attempt)) * Double.random(in: 0.5...1.0)))
            }
        }
        scheduledRenewal = nil
    }

    /// Takes an SVID saved by an earlier run (`--state-dir`). Renewal is timed from its own
    /// issue time, so one past half its life is renewed at once.
    func adopt(_ saved: SVID, bundle savedBundle: TrustBundle) async {
        svid = saved
        bundle = savedBundle
        installedAt = .distantPast
        logger.info("SVID loaded from the state directory", metadata: ["spiffe_id": "\(saved.id)", "not_after": "\(saved.notAfter)"])
        await onChange(saved, savedBundle)
    }

    /// Renews for as long as the task runs.
    func renewalLoop() async {
        var attempt = 0
        while !Task.isCancelled {
            guard let current = svid else { return }
            let now = clock()
            let wait: TimeInterval
            if attempt == 0 {
                wait = schedule.renewalTime(notBefore: max(current.notBefore, installedAt), notAfter: current.notAfter)
                    .timeIntervalSince(now)
            } else {
                wait = schedule.retryDelay(attempt: attempt, notAfter: current.notAfter, now: now)
            }
            if wait > 0 { try? await Task.sleep(for: .seconds(wait)) }
            if Task.isCancelled { return }
            do {
                try await renew()
                attempt = 0
            } catch {
                attempt += 1
                let remaining = current.notAfter.timeIntervalSince(clock())
                if remaining <= 0 {
                    // Renewal needs a valid SVID: from here only a new join token helps.
                    logger.error("the SVID has expired and cannot be renewed; restart the proxy with a new join token",
                                 metadata: ["expired_at": "\(current.notAfter)"])
                }
                logger.warning("SVID renewal failed; still serving on the current SVID",
                               metadata: ["error": "\(error)", "expires_in_s": "\(Int(remaining))", "attempt": "\(attempt)"])
            }
        }
    }
}
