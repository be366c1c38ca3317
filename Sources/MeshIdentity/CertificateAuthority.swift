import Crypto
import Foundation
import MeshCore
import SwiftASN1
import X509

/// The mesh CA: an ECDSA P-256 root that signs X.509-SVIDs.
///
/// The CA never trusts what a CSR asks for beyond its public key: the identity written into the
/// SVID is decided by the caller (from a join token or the renewing peer's SVID).
public struct CertificateAuthority: Sendable {
    public let trustDomain: String
    public let certificate: Certificate
    private let privateKey: Certificate.PrivateKey

    /// Creates a new root valid for `lifetime` seconds (default 10 years).
    public static func create(trustDomain: String, now: Date = Date(), lifetime: TimeInterval = 10 * 365 * 86400) throws -> CertificateAuthority {
        try SPIFFEID.validate(trustDomain: trustDomain)
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            OrganizationName("SwiftMesh")
            CommonName("SwiftMesh CA \(trustDomain)")
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: SVIDProfile.randomSerial(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(lifetime),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try SVIDProfile.caExtensions(trustDomain: trustDomain, publicKey: key.publicKey),
            issuerPrivateKey: key)
        return CertificateAuthority(trustDomain: trustDomain, certificate: certificate, privateKey: key)
    }

    /// Loads a CA persisted with ``certificatePEM`` and ``privateKeyPEM``.
    public init(certificatePEM: String, privateKeyPEM: String) throws {
        let certificate: Certificate
        let key: Certificate.PrivateKey
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
            key = try Certificate.PrivateKey(pemEncoded: privateKeyPEM)
        } catch {
            throw MeshError(.invalidCertificate, "the stored CA certificate or key does not parse (\(error)); restore them from backup or start with a new data directory")
        }
        guard key.publicKey == certificate.publicKey else {
            throw MeshError(.invalidCertificate, "the stored CA key does not match the CA certificate; restore the pair from the same backup")
        }
        guard let uri = certificate.uriSANs.first, let id = try? SPIFFEID(parsing: uri) else {
            throw MeshError(.invalidCertificate, "the stored CA certificate names no trust domain (spiffe:// URI SAN)")
        }
        self.init(trustDomain: id.trustDomain, certificate: certificate, privateKey: key)
    }

    private init(trustDomain: String, certificate: Certificate, privateKey: Certificate.PrivateKey) {
        self.trustDomain = trustDomain
        self.certificate = certificate
        self.privateKey = privateKey
    }

    public var certificatePEM: String { get throws { try certificate.serializeAsPEM().pemString + "\n" } }
    public var privateKeyPEM: String { get throws { try privateKey.serializeAsPEM().pemString + "\n" } }

    /// Parses a CSR and checks it without signing anything: size, PKCS#10 form, proof of
    /// possession (its signature), ECDSA P-256 key.
    /// - Throws: ``MeshError`` `invalid-csr` naming what is wrong.
    public static func validate(csrPEM: String) throws -> CertificateSigningRequest {
        guard csrPEM.utf8.count <= 16 * 1024 else {
            throw MeshError(.invalidCSR, "the CSR is larger than 16 KiB; send a PEM CSR for one ECDSA P-256 key")
        }
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: csrPEM)
        } catch {
            throw MeshError(.invalidCSR, "the CSR does not parse as a PEM PKCS#10 request: \(error)")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw MeshError(.invalidCSR, "the CSR's signature does not match its public key")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil else {
            throw MeshError(.invalidCSR, "the CSR's key must be ECDSA P-256")
        }
        return csr
    }

    /// Signs a CSR (PEM) into an X.509-SVID for `id`.
    ///
    /// - Parameters:
    ///   - lifetime: seconds of validity; clamped to the CA's own validity.
    /// - Throws: ``MeshError`` `invalid-csr` (see ``validate(csrPEM:)``), or `forbidden` for an
    ///   identity outside this CA's trust domain.
    public func sign(csrPEM: String, as id: SPIFFEID, lifetime: TimeInterval, now: Date = Date()) throws -> Certificate {
        let csr = try Self.validate(csrPEM: csrPEM)
        guard id.trustDomain == trustDomain else {
            throw MeshError(.forbidden, "identity \(id) is not in this CA's trust domain \(trustDomain)")
        }
        let notAfter = min(now.addingTimeInterval(lifetime), certificate.notValidAfter)
        return try Certificate(
            version: .v3, serialNumber: SVIDProfile.randomSerial(), publicKey: csr.publicKey,
            // Backdated a little so that peers with a slightly slow clock accept it at once.
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: notAfter,
            issuer: certificate.subject, subject: DistinguishedName(), signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try SVIDProfile.leafExtensions(id: id, publicKey: csr.publicKey, issuerKey: certificate.publicKey),
            issuerPrivateKey: privateKey)
    }
}
