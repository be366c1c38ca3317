import Foundation
import MeshCore
import SwiftASN1
import X509

/// A `VerifierPolicy` that enforces the SPIFFE X.509-SVID profile on the leaf of a chain:
/// exactly one URI SAN that is a SPIFFE ID of our trust domain, CA:FALSE, a signing key usage,
/// and (when asked) one of a set of expected identities.
///
/// It composes with swift-certificates' `RFC5280Policy`, which checks validity periods,
/// signatures and the CA path.
public struct SPIFFELeafPolicy: VerifierPolicy, Sendable {
    public let trustDomain: String
    /// When set, the peer must be one of these (e.g. the service the outbound proxy dialed).
    public let expected: Set<SPIFFEID>?
    public let usage: ExtendedKeyUsage.Usage

    public init(trustDomain: String, expected: Set<SPIFFEID>?, usage: ExtendedKeyUsage.Usage) {
        self.trustDomain = trustDomain
        self.expected = expected
        self.usage = usage
    }

    public var verifyingCriticalExtensions: [ASN1ObjectIdentifier] {
        [.X509ExtensionID.subjectAlternativeName, .X509ExtensionID.keyUsage, .X509ExtensionID.extendedKeyUsage]
    }

    public func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        switch check(leaf: chain.leaf) {
        case .success: return .meetsPolicy
        case .failure(let error): return .failsToMeetPolicy(reason: error.message)
        }
    }

    /// The same checks, usable without a chain (and by tests).
    public func check(leaf: Certificate) -> Result<SPIFFEID, MeshError> {
        func fail(_ message: String) -> Result<SPIFFEID, MeshError> { .failure(MeshError(.invalidCertificate, message)) }
        let sans: SubjectAlternativeNames?
        do { sans = try leaf.extensions.subjectAlternativeNames } catch { return fail("the SVID's SAN extension is malformed") }
        let names = Array(sans ?? SubjectAlternativeNames())
        let uris = leaf.uriSANs
        guard uris.count == 1 else { return fail("an SVID must carry exactly one URI SAN, this one has \(uris.count)") }
        guard names.count == 1 else { return fail("an SVID must carry only its SPIFFE URI SAN, this one has \(names.count) SANs") }
        guard let id = try? SPIFFEID(parsing: uris[0]), !id.path.isEmpty else {
            return fail("the SVID's URI SAN '\(uris[0])' is not a workload SPIFFE ID")
        }
        guard id.trustDomain == trustDomain else {
            return fail("the SVID belongs to trust domain '\(id.trustDomain)', not '\(trustDomain)'")
        }
        switch Result(catching: { try leaf.extensions.basicConstraints }) {
        case .success(.some(.isCertificateAuthority)): return fail("the SVID is a CA certificate (CA:TRUE)")
        case .success: break
        case .failure: return fail("the SVID's basic constraints are malformed")
        }
        switch Result(catching: { try leaf.extensions.keyUsage }) {
        case .success(.some(let keyUsage)):
            guard keyUsage.digitalSignature, !keyUsage.keyCertSign, !keyUsage.cRLSign else {
                return fail("the SVID's key usage must be digitalSignature and must not allow signing certificates")
            }
        case .success(.none): return fail("the SVID has no key usage extension")
        case .failure: return fail("the SVID's key usage is malformed")
        }
        switch Result(catching: { try leaf.extensions.extendedKeyUsage }) {
        case .success(.some(let eku)):
            guard eku.contains(usage) else { return fail("the SVID's extended key usage does not allow \(usage)") }
        case .success(.none): break
        case .failure: return fail("the SVID's extended key usage is malformed")
        }
        if let expected, !expected.contains(id) {
            let wanted = expected.map(\.description).sorted().joined(separator: ", ")
            return fail("peer is \(id), expected \(wanted)")
        }
        return .success(id)
    }
}

/// Verifies a peer's presented certificates against the mesh trust bundle and the SPIFFE
/// profile. Used by the TLS layer for every mTLS handshake, both directions.
public struct SPIFFEPeerVerifier: Sendable {
    public let bundle: TrustBundle
    public let expected: Set<SPIFFEID>?
    public let usage: ExtendedKeyUsage.Usage
    private let clock: @Sendable () -> Date

    public init(bundle: TrustBundle, expected: Set<SPIFFEID>? = nil, usage: ExtendedKeyUsage.Usage,
                clock: @escaping @Sendable () -> Date = { Date() }) {
        self.bundle = bundle
        self.expected = expected
        self.usage = usage
        self.clock = clock
    }

    /// The outcome of one verification.
    public enum Outcome: Sendable {
        /// `chain` runs from the leaf to a root of the bundle.
        case verified(SPIFFEID, chain: [Certificate])
        case rejected(String)
    }

    /// - Parameter presented: the peer's certificates in DER, leaf first, as sent in TLS.
    public func verify(presentedDER: [[UInt8]]) async -> Outcome {
        guard !presentedDER.isEmpty else { return .rejected("the peer sent no certificate") }
        guard presentedDER.count <= 8 else { return .rejected("the peer sent more than 8 certificates") }
        let certificates: [Certificate]
        do {
            certificates = try presentedDER.map { try Certificate(derEncoded: $0) }
        } catch {
            return .rejected("the peer's certificate does not parse")
        }
        let leafPolicy = SPIFFELeafPolicy(trustDomain: bundle.trustDomain, expected: expected, usage: usage)
        // Check the profile first so that the reason logged names the SPIFFE rule that failed.
        if case .failure(let error) = leafPolicy.check(leaf: certificates[0]) {
            return .rejected(error.message)
        }
        var verifier = Verifier(rootCertificates: CertificateStore(bundle.roots)) {
            RFC5280Policy(validationTime: clock())
            leafPolicy
        }
        let result = await verifier.validate(leaf: certificates[0],
                                             intermediates: CertificateStore(certificates.dropFirst()))
        switch result {
        case .validCertificate(let chain):
            guard let id = chain.leaf.spiffeID else { return .rejected("the peer has no SPIFFE ID") }
            return .verified(id, chain: Array(chain))
        case .couldNotValidate(let failures):
            let reason = failures.first.map { "\($0.policyFailureReason)" }
                ?? "the peer's chain does not end in the mesh trust bundle"
            return .rejected(reason)
        }
    }
}
