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
