import Foundation
import MeshCore
import MeshIdentity
import NIOCore
import NIOSSL
import X509

/// Builds the TLS contexts of the mesh from an SVID and a trust bundle.
///
/// Every mesh hop is TLS 1.3 only, presents an SVID, requires one from the peer, and trusts
/// only the mesh bundle. BoringSSL's own chain checks are replaced by
/// ``SPIFFEVerification`` (see there for why).
public enum MeshTLS {
    /// Server side of an mTLS hop (a proxy's inbound listener).
    /// - Parameter clientCertificate: `.required` for the data path; `.optional` for the control
    ///   plane's API, where a joining proxy has no SVID yet and authenticates with a token.
    /// - Parameter protocols: the ALPN names offered; the caller's choice among them says what
    ///   the connection carries (``ALPN``).
    public static func serverContext(svid: SVID, bundle: TrustBundle,
                                     clientCertificate: ClientCertificateMode = .required,
                                     protocols: [String] = [ALPN.http1]) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: try svid.chain.map { .certificate(try nioCertificate($0)) },
            privateKey: .privateKey(try nioKey(svid.key)))
        apply(bundle: bundle, to: &config)
        config.applicationProtocols = protocols
        config.certificateVerification = clientCertificate == .required ? .noHostnameVerification : .optionalVerification
        return try NIOSSLContext(configuration: config)
    }

    /// Client side of an mTLS hop. Without an SVID (a proxy's first join) no certificate is sent.
    /// - Parameter protocols: the ALPN names asked for: what this connection will carry.
    public static func clientContext(svid: SVID?, bundle: TrustBundle, protocols: [String] = [ALPN.http1]) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        if let svid {
            config.certificateChain = try svid.chain.map { .certificate(try nioCertificate($0)) }
            config.privateKey = .privateKey(try nioKey(svid.key))
        }
        apply(bundle: bundle, to: &config)
        config.applicationProtocols = protocols
        config.certificateVerification = .noHostnameVerification
        return try NIOSSLContext(configuration: config)
    }

    public enum ClientCertificateMode: Sendable { case required, optional }

    /// A TLS context with the verifier that checks the peer: what one side of an mTLS
    /// connection needs.
    public struct PeerSetup: Sendable {
        public var context: NIOSSLContext
        public var verifier: SPIFFEPeerVerifier
        public init(context: NIOSSLContext, verifier: SPIFFEPeerVerifier) {
            self.context = context
            self.verifier = verifier
        }
    }

    private static func apply(bundle: TrustBundle, to config: inout TLSConfiguration) {
        config.minimumTLSVersion = .tlsv13
        config.maximumTLSVersion = .tlsv13
        // Only the mesh bundle, never the system store. The custom verification callback does
        // the real validation; these roots also feed the CA list sent to clients.
        config.trustRoots = .certificates(bundle.roots.compactMap { try? nioCertificate($0) })
    }

    /// What a connection between proxies carries, named in its TLS handshake (ALPN), so the
    /// receiving proxy never has to guess from the bytes.
    public enum ALPN {
        /// HTTP/1.1 requests.
        public static let http1 = "http/1.1"
        /// HTTP/2 streams (gRPC, and any h2 request from an app).
        public static let http2 = "h2"
        /// An opaque TCP stream (`appProtocol: tcp`, or a connection that is not HTTP),
        /// relayed byte for byte to the app.
        public static let opaque = "swiftmesh-opaque/1"
    }

    static func nioCertificate(_ certificate: Certificate) throws -> NIOSSLCertificate {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
    }

    static func nioKey(_ key: WorkloadKey) throws -> NIOSSLPrivateKey {
        try NIOSSLPrivateKey(bytes: Array(try key.pem.utf8), format: .pem)
    }
}

import SwiftASN1
