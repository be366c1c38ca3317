import NIOCore

/// Turns the flushes of one event-loop tick into one, and the small writes of that flush into
/// one buffer.
///
/// Flushes: the first flush that reaches it is deferred to the end of the tick
/// (`EventLoop.execute` runs after the I/O events that woke the loop have been handled), and
/// the flushes after it until then are dropped. For connections that many streams write to,
/// such as an HTTP/2 connection: each stream flushes its own frames, and the streams of one
/// tick are usually driven by one read elsewhere (ten requests read from the app become ten
/// streams on the connection to the peer proxy).
///
/// Writes: swift-nio-ssl encrypts every buffer written as a TLS record of its own, and
/// swift-nio-http2 writes a frame as one or two buffers (a DATA frame's 9-byte header, then
/// its payload), so a stream's answer was three records or more, each an encryption here and
/// a decryption at the peer. Writes of up to ``maxPieceBytes`` are copied together, up to
/// ``maxMergedBytes`` (one TLS record) a buffer; a larger write goes on as it is, after what
/// was gathered before it. The bytes and their order are unchanged, every write's promise is
/// completed with the buffer that carried it, and nothing waits longer than the tick that
/// wrote it.
///
/// Add it on the socket side of the protocol handler (between TLS and HTTP/2). Under an
/// HTTP/1.1 codec over TLS it is made with `deferringFlushes: false`: one flush per response
/// already, sent at once, while the head and body parts of a message still leave as one
/// record.
public final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = IOData
    public typealias OutboundOut = IOData

    /// The largest write that is copied into a shared buffer; larger ones are cheaper to pass
    /// on as they are than to copy.
    public static let maxPieceBytes = 4 * 1024
    /// The most a shared buffer holds: one TLS record's plaintext.
    public static let maxMergedBytes = 16 * 1024

    private let deferringFlushes: Bool
    private var scheduled = false
    /// The writes gathered since the last one passed on: the first as it came (a flush with a
    /// single write copies nothing), the later ones copied behind it.
    private var gathered: ByteBuffer?
    private var gatheredCopied = false
    private var promises: [EventLoopPromise<Void>] = []

    /// - Parameter deferringFlushes: hold a flush to the end of the tick (many streams on one
    ///   connection) rather than pass it on at once (writes are gathered either way).
    public init(deferringFlushes: Bool = true) {
        self.deferringFlushes = deferringFlushes
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .byteBuffer(var buffer) = unwrapOutboundIn(data), buffer.readableBytes <= Self.maxPieceBytes else {
            passGathered(context)
            context.write(data, promise: promise)
            return
        }
        if var held = gathered {
            if held.readableBytes + buffer.readableBytes > Self.maxMergedBytes {
                passGathered(context)
                gathered = buffer
            } else {
                if !gatheredCopied {
                    // Our own buffer to copy into: the first write's may be shared or small.
                    let room = min(Self.maxMergedBytes, max(1024, 4 * (held.readableBytes + buffer.readableBytes)))
                    var copy = context.channel.allocator.buffer(capacity: room)
                    copy.writeBuffer(&held)
                    held = copy
                    gatheredCopied = true
                }
                gathered = nil
                held.writeBuffer(&buffer)
                gathered = held
            }
        } else {
            gathered = buffer
        }
        if let promise { promises.append(promise) }
    }

    public func flush(context: ChannelHandlerContext) {
        guard deferringFlushes else {
            passGathered(context)
            context.flush()
            return
        }
        guard !scheduled else { return }
        scheduled = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = bound.value
            handler.scheduled = false
            handler.passGathered(context)
            context.flush()
        }
    }

    /// Closing: what was written goes on first, as the channel would have had it.
    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        passGathered(context)
        context.close(mode: mode, promise: promise)
    }

    /// A removal must not strand written bytes: they go on, and are flushed if a flush was
    /// pending.
    public func handlerRemoved(context: ChannelHandlerContext) {
        passGathered(context)
        if scheduled { context.flush() }
    }

    /// Writes the gathered buffer on, its promise completing every write it carries.
    private func passGathered(_ context: ChannelHandlerContext) {
        guard let buffer = gathered else { return }
        gathered = nil
        gatheredCopied = false
        var promise: EventLoopPromise<Void>?
        if promises.count == 1 {
            promise = promises[0]
        } else if !promises.isEmpty {
            let all = context.eventLoop.makePromise(of: Void.self)
            for each in promises { all.futureResult.cascade(to: each) }
            promise = all
        }
        promises.removeAll(keepingCapacity: true)
        context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
    }
}
