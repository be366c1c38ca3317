import Crypto
import Foundation
import MeshCore
import X509

/// A workload's private key, generated in memory by the proxy. It never leaves the process:
/// only CSRs built from it do.
public struct WorkloadKey: Sendable {
    public let privateKey: Certificate.PrivateKey

    public init() { privateKey = Certificate.PrivateKey(P256.Signing.PrivateKey()) }

    public init(pem: String) throws {
        do { privateKey = try Certificate.PrivateKey(pemEncoded: pem) } catch {
            throw MeshError(.invalidCertificate, "the private key PEM does not parse: \(error)")
        }
    }

    /// A PKCS#10 CSR for this key. The CA ignores the subject; it is set for people reading it.
    public func csrPEM(service: ServiceName) throws -> String {
        let subject = try DistinguishedName { CommonName(service.rawValue) }
        let csr = try CertificateSigningRequest(version: .v1, subject: subject, privateKey: privateKey,
                                                attributes: CertificateSigningRequest.Attributes())
        return try csr.serializeAsPEM().pemString + "\n"
    }

    public var pem: String { get throws { try privateKey.serializeAsPEM().pemString + "\n" } }
}

/// An X.509-SVID with its key: what a proxy presents on every mTLS connection.
public struct SVID: Sendable {
    /// Leaf first, then any intermediates (never the root).
    public let chain: [Certificate]
    public let key: WorkloadKey
    public let id: SPIFFEID

    public init(chain: [Certificate], key: WorkloadKey) throws {
        guard let leaf = chain.first else {
            throw MeshError(.invalidCertificate, "the SVID chain is empty")
        }
        guard let id = leaf.spiffeID else {
            throw MeshError(.invalidCertificate, "the SVID does not carry exactly one spiffe:// URI SAN")
        }
        guard leaf.publicKey == key.privateKey.publicKey else {
            throw MeshError(.invalidCertificate, "the SVID's certificate does not match its private key")
        }
        self.chain = chain
        self.key = key
        self.id = id
    }

    public var leaf: Certificate { chain[0] }
    public var notBefore: Date { leaf.notValidBefore }
    public var notAfter: Date { leaf.notValidAfter }
}
