import Foundation
import MeshCore
import Crypto
import SwiftASN1
import X509

/// The roots a mesh member trusts: the mesh CA(s) only, never the system store. Several roots
/// may be present at once so that a CA can rotate by overlap.
public struct TrustBundle: Sendable {
    public let roots: [Certificate]
    public let trustDomain: String

    public init(roots: [Certificate], trustDomain: String? = nil) throws {
        guard !roots.isEmpty else {
            throw MeshError(.invalidCertificate, "the trust bundle holds no certificate; point --ca-file at the control plane's ca.pem")
        }
        if let trustDomain {
            self.trustDomain = trustDomain
        } else if let uri = roots.lazy.flatMap(\.uriSANs).first, let id = try? SPIFFEID(parsing: uri) {
            self.trustDomain = id.trustDomain
        } else {
            throw MeshError(.invalidCertificate, "the trust bundle's CA names no trust domain (spiffe:// URI SAN); is this a SwiftMesh ca.pem?")
        }
        self.roots = roots
    }

    public init(pem: String) throws {
        try self.init(roots: try PEM.certificates(from: pem))
    }

    public var pem: String { get throws { try PEM.text(of: roots) } }
}

extension TrustBundle {
    /// A root's fingerprint: SHA-256 of its DER encoding, the first 16 bytes in hex. How
    /// proxies report which roots they trust and which one their SVID chains to.
    public static func fingerprint(of certificate: Certificate) -> String {
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(certificate)) != nil else { return "" }
        return SHA256.hash(data: serializer.serializedBytes).prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    public var fingerprints: [String] { roots.map(Self.fingerprint(of:)) }

    /// The root whose key signed `leaf`, if it is in this bundle.
    public func root(of leaf: Certificate) -> Certificate? {
        roots.first { $0.subject == leaf.issuer && $0.publicKey.isValidSignature(leaf.signature, for: leaf) }
    }
}
