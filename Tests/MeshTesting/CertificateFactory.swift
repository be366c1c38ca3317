import Crypto
import Foundation
import MeshIdentity
import SwiftASN1
import X509

/// Makes certificates of every shape a hostile or broken peer might present: other CAs,
/// expired SVIDs, missing or extra SANs, CA:TRUE leaves.
public struct CertificateFactory {
    public struct Issuer {
        public let certificate: Certificate
        public let key: Certificate.PrivateKey
    }

    /// Loads the mesh CA from a control plane's data directory (tests own that directory).
    public static func meshCA(dataDir: URL) throws -> Issuer {
        let cert = try Certificate(pemEncoded: String(contentsOf: dataDir.appendingPathComponent("ca-cert.pem"), encoding: .utf8))
        let key = try Certificate.PrivateKey(pemEncoded: String(contentsOf: dataDir.appendingPathComponent("ca.key"), encoding: .utf8))
        return Issuer(certificate: cert, key: key)
    }

    /// A fresh self-signed CA, e.g. for "a certificate from another CA".
    public static func otherCA(trustDomain: String = "mesh.local") throws -> Issuer {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName { CommonName("Not the mesh CA") }
        let cert = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(86400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true))
                SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://\(trustDomain)")])
            }, issuerPrivateKey: key)
        return Issuer(certificate: cert, key: key)
    }

    /// A leaf signed by `issuer` with exactly the SANs and flags given.
    public static func leaf(issuer: Issuer, uris: [String], dnsNames: [String] = [], isCA: Bool = false,
                            notBefore: Date = Date().addingTimeInterval(-60),
                            notAfter: Date = Date().addingTimeInterval(3600)) throws -> (chainPEM: String, keyPEM: String) {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        var names: [GeneralName] = uris.map { .uniformResourceIdentifier($0) }
        names += dnsNames.map { .dnsName($0) }
        let sans = names
        let cert = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: issuer.certificate.subject, subject: try DistinguishedName { CommonName("test leaf") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                if isCA {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                    Critical(KeyUsage(digitalSignature: true, keyCertSign: true))
                } else {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                }
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                if !sans.isEmpty { SubjectAlternativeNames(sans) }
            }, issuerPrivateKey: issuer.key)
        return (try cert.serializeAsPEM().pemString + "\n", try key.serializeAsPEM().pemString + "\n")
    }
}
