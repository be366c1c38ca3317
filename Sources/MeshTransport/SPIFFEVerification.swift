import Foundation
import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOSSL
import X509

/// Bridges ``SPIFFEPeerVerifier`` into NIOSSL's custom verification callback.
///
/// The callback replaces BoringSSL's chain checks entirely, so it validates the chain itself
/// (swift-certificates' RFC 5280 verifier plus our SPIFFE leaf policy) and completes with the
/// validated chain, so that ``PeerIdentity/of(_:)`` can read the identity later.
public enum SPIFFEVerification {
    /// Builds the callback. Build it inside the channel initializer: it is not `Sendable`.
    public static func callback(_ verifier: SPIFFEPeerVerifier, logger: Logger? = nil)
        -> NIOSSLCustomVerificationCallbackWithMetadata {
        { presented, promise in
            let der: [[UInt8]]
            do {
                der = try presented.map { try $0.toDERBytes() }
            } catch {
                promise.succeed(.failed)
                return
            }
            Task {
                switch await verifier.verify(presentedDER: der) {
                case .verified(_, let chain):
                    do {
                        let nioChain = try chain.map { try MeshTLS.nioCertificate($0) }
                        promise.succeed(.certificateVerified(VerificationMetadata(NIOSSL.ValidatedCertificateChain(nioChain))))
                    } catch {
                        promise.succeed(.failed)
                    }
                case .rejected(let reason):
                    logger?.info("mTLS peer rejected", metadata: ["reason": "\(reason)"])
                    promise.succeed(.failed)
                }
            }
        }
    }
}

/// The verified SPIFFE identity of the peer of a TLS channel.
public enum PeerIdentity {
    /// Reads the identity from the validated chain on the channel's TLS handler. Call on the
    /// channel's event loop, after the handshake.
    public static func of(_ pipeline: ChannelPipeline.SynchronousOperations) -> SPIFFEID? {
        guard let chain = try? pipeline.nioSSL_peerValidatedCertificateChain(),
              let leaf = chain.first,
              let der = try? leaf.toDERBytes(),
              let certificate = try? Certificate(derEncoded: der) else { return nil }
        return certificate.spiffeID
    }
}
