import Crypto
import Foundation
import MeshCore
import SwiftASN1
import X509

/// The extensions every SwiftMesh X.509-SVID carries, in one place so that the CA (which issues)
/// and the verifier (which checks) cannot drift apart.
enum SVIDProfile {
    static func leafExtensions(id: SPIFFEID, publicKey: Certificate.PublicKey,
                               issuerKey: Certificate.PublicKey) throws -> Certificate.Extensions {
        try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            // Exactly one URI SAN: the SPIFFE ID. Marked critical because the subject is empty.
            Critical(SubjectAlternativeNames([.uniformResourceIdentifier(id.description)]))
            SubjectKeyIdentifier(hash: publicKey)
            AuthorityKeyIdentifier(keyIdentifier: SubjectKeyIdentifier(hash: issuerKey).keyIdentifier)
        }
    }

    static func caExtensions(trustDomain: String, publicKey: Certificate.PublicKey) throws -> Certificate.Extensions {
        try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
            Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            // SPIFFE bundles may name their trust domain in the CA; proxies learn it from here.
            SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://\(trustDomain)")])
            SubjectKeyIdentifier(hash: publicKey)
        }
    }

    /// A random positive 20-byte serial (RFC 5280 §4.1.2.2).
    static func randomSerial() -> Certificate.SerialNumber {
        var bytes = (0..<20).map { _ in UInt8.random(in: 0...255) }
        bytes[0] &= 0x7F
        bytes[0] |= 0x01
        return Certificate.SerialNumber(bytes: bytes)
    }
}

extension Certificate {
    /// The URI SANs of the certificate (empty when it has none or the extension is malformed).
    public var uriSANs: [String] {
        guard let sans = try? extensions.subjectAlternativeNames else { return [] }
        return sans.compactMap {
            if case .uniformResourceIdentifier(let uri) = $0 { return uri }
            return nil
        }
    }

    /// The certificate's SPIFFE ID when it carries exactly one URI SAN that parses as one.
    public var spiffeID: SPIFFEID? {
        let uris = uriSANs
        guard uris.count == 1 else { return nil }
        return try? SPIFFEID(parsing: uris[0])
    }
}

/// PEM helpers: chains and bundles are files of several concatenated certificates.
public enum PEM {
    /// Splits a PEM text holding any number of certificates.
    /// - Throws: ``MeshError`` `invalid-certificate` when a block does not parse.
    public static func certificates(from text: String) throws -> [Certificate] {
        var result: [Certificate] = []
        var current: [Substring] = []
        var inside = false
        for line in text.split(whereSeparator: \.isNewline) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed == "-----BEGIN CERTIFICATE-----" { inside = true; current = [Substring(trimmed)]; continue }
            guard inside else { continue }
            current.append(Substring(trimmed))
            if trimmed == "-----END CERTIFICATE-----" {
                inside = false
                do {
                    result.append(try Certificate(pemEncoded: current.joined(separator: "\n")))
                } catch {
                    throw MeshError(.invalidCertificate, "a certificate in the PEM text does not parse: \(error)")
                }
            }
        }
        return result
    }

    public static func text(of certificates: [Certificate]) throws -> String {
        try certificates.map { try $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
    }
}
