import Foundation
import MeshCore
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
