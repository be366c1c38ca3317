import MeshIdentity
import MeshTransport
import NIOCore

/// Reads the verified peer identity of a downstream connection, if it is TLS.
enum PeerIdentityReader {
    /// For an HTTP/2 stream the TLS handler is on the connection, the stream's parent. (An
    /// accepted connection's parent is the listening socket, which has none.)
    static func peer(of context: ChannelHandlerContext) -> SPIFFEID? {
        if let own = PeerIdentity.of(context.pipeline.syncOperations) { return own }
        guard let parent = context.channel.parent, parent.eventLoop === context.eventLoop else { return nil }
        return PeerIdentity.of(parent.pipeline.syncOperations)
    }
}

/// The peer identity of one HTTP/2 connection, shared by its streams: read from the
/// certificate once, at the first stream, rather than once per stream (parsing the certificate
/// per stream took a tenth of the inbound proxy's CPU under gRPC load). A TLS 1.3 connection's
/// peer certificate never changes. Used only on the connection's event loop, which its streams
/// share.
final class ConnectionPeer {
    private var loaded = false
    private var peer: SPIFFEID?

    func peer(of context: ChannelHandlerContext) -> SPIFFEID? {
        if !loaded {
            peer = PeerIdentityReader.peer(of: context)
            loaded = true
        }
        return peer
    }
}
