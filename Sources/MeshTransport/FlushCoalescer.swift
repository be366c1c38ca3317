import NIOCore

/// Turns the flushes of one event-loop tick into one: the first flush that reaches it is
/// deferred to the end of the tick (`EventLoop.execute` runs after the I/O events that woke
/// the loop have been handled), and the flushes after it until then are dropped.
///
/// For connections that many streams write to, such as an HTTP/2 connection: each stream
/// flushes its own frames, and the streams of one tick are usually driven by one read
/// elsewhere (ten requests read from the app become ten streams on the connection to the peer
/// proxy). Without this, every stream's flush is one TLS record and one `writev`; with it,
/// the tick's frames go out together. The bytes and their order are unchanged, and nothing
/// waits longer than the tick that wrote it.
///
/// Add it on the socket side of the protocol handler (between TLS and HTTP/2).
public final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = NIOAny
    public typealias OutboundOut = NIOAny

    private var scheduled = false

    public init() {}

    public func flush(context: ChannelHandlerContext) {
        guard !scheduled else { return }
        scheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.scheduled = false
            context.flush()
        }
    }

    /// A removal must not strand written bytes: flush what is pending now.
    public func handlerRemoved(context: ChannelHandlerContext) {
        if scheduled { context.flush() }
    }
}
