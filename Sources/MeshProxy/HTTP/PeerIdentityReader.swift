import MeshIdentity
import MeshTransport
import NIOCore

/// Reads the verified peer identity of a downstream connection, if it is TLS.
enum PeerIdentityReader {
    static func peer(of context: ChannelHandlerContext) -> SPIFFEID? {
        PeerIdentity.of(context.pipeline.syncOperations)
    }
}
