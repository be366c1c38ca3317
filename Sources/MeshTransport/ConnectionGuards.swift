import NIOCore
import NIOHTTP1
import NIOTLS

// Small handlers that bound how long and how much a peer can hold a connection. Shared by
// the data path (MeshProxy) and the API servers, so every listener has the same limits.

/// Closes a connection whose TLS handshake has not completed in time. Add it after the TLS
/// handler: it must see the handshake-completed event.
public final class HandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    /// How a handshake ended without completing.
    public enum Failure {
        case timeout
        /// The connection closed first.
        case closed
        /// The TLS layer reported this error.
        case error(any Error)
    }

    private let timeout: TimeAmount
    private let onFailure: ((Failure) -> Void)?
    private var scheduled: Scheduled<Void>?
    private var settled = false

    /// - Parameter onFailure: called at most once, when the handshake fails (for metrics).
    public init(timeout: TimeAmount, onFailure: ((Failure) -> Void)? = nil) {
        self.timeout = timeout
        self.onFailure = onFailure
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        scheduled = context.eventLoop.scheduleTask(in: timeout) { [weak self] in
            self?.settle(.timeout)
            channel.close(promise: nil)
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            settled = true
            scheduled?.cancel()
            scheduled = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        settle(.error(error))
        context.fireErrorCaught(error)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        scheduled?.cancel()
        settle(.closed)
        context.fireChannelInactive()
    }

    private func settle(_ failure: Failure) {
        guard !settled else { return }
        settled = true
        onFailure?(failure)
    }
}

/// Closes a connection when the `IdleStateHandler` before it reports it idle.
public final class IdleCloseHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny
    public init() {}

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Closes a connection whose request headers take longer than the limit to arrive, counted
/// from the first byte of the request (slowloris). Sits before the HTTP decoder, on raw
/// bytes; the request handler calls ``headReceived()`` when a head is complete and
/// ``awaitNextRequest()`` when the connection waits for the next request.
///
/// The timer is armed only when a read ends with the head still incomplete: a head that
/// arrives whole (nearly every request) costs a clock read, not a scheduled task.
///
/// A handler that sees the same reads can run the clock without this one in the pipeline
/// (one handler less on every read), through ``bytesRead()``, ``readEnded(on:)`` and
/// ``stop()``, and put it in the pipeline when it hands the connection on.
public final class RequestHeaderTimer: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    private let limit: TimeAmount
    private var waitingForHead = true
    /// When the first byte of the awaited head arrived; nil before it.
    private var firstByte: NIODeadline?
    private var timer: Scheduled<Void>?

    public init(limit: TimeAmount) { self.limit = limit }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesRead()
        context.fireChannelRead(data)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        readEnded(on: context.channel)
        context.fireChannelReadComplete()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    /// Bytes of the connection were read: the first of an awaited head starts the clock.
    public func bytesRead() {
        if waitingForHead && firstByte == nil { firstByte = .now() }
    }

    /// A read of `channel` ended with the awaited head incomplete: the timer is armed, to
    /// close `channel` at the limit. Call on `channel`'s event loop.
    public func readEnded(on channel: Channel) {
        if waitingForHead, let firstByte, timer == nil {
            timer = channel.eventLoop.scheduleTask(deadline: firstByte + limit) { channel.close(promise: nil) }
        }
    }

    /// The connection closed: the timer is cancelled.
    public func stop() {
        timer?.cancel()
        timer = nil
    }

    /// A complete request head arrived: the body may take as long as it needs.
    public func headReceived() {
        waitingForHead = false
        firstByte = nil
        timer?.cancel()
        timer = nil
    }

    /// The exchange ended; the next bytes start the next request's clock.
    public func awaitNextRequest() {
        waitingForHead = true
    }
}

/// Answers HTTP parse errors: 431 when the head is larger than the decoder accepts (NIO's own
/// handler would say 400), 400 for anything else, then closes. Use in place of NIO's
/// `HTTPServerProtocolErrorHandler` (`withErrorHandling: false`).
public final class HTTPParseErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias InboundOut = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    private var responseInProgress = false

    public init() {}

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        // Mid-response there is no way to send a status: just close.
        if !responseInProgress, let parseError = error as? HTTPParserError {
            let (head, body) = Self.answer(to: parseError)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.close(promise: nil)
    }

    /// The answer to a request the decoder cannot read: 431 when its head is larger than the
    /// decoder accepts, 400 for anything else; the connection closes after it. Also used by
    /// the proxy's HTTP handler, which answers parse errors itself.
    public static func answer(to error: HTTPParserError) -> (HTTPResponseHead, ByteBuffer) {
        let tooLarge: Bool
        if case .headerOverflow = error { tooLarge = true } else { tooLarge = false }
        let status: HTTPResponseStatus = tooLarge ? .init(statusCode: 431) : .badRequest
        let body = ByteBuffer(string: tooLarge ? "swiftmesh: request headers too large\n" : "swiftmesh: malformed HTTP request\n")
        let headers: HTTPHeaders = ["connection": "close", "content-length": "\(body.readableBytes)",
                                    "content-type": "text/plain; charset=utf-8"]
        return (HTTPResponseHead(version: .http1_1, status: status, headers: headers), body)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: responseInProgress = true
        case .end: responseInProgress = false
        case .body: break
        }
        context.write(data, promise: promise)
    }
}

/// Drives a ``RequestHeaderTimer`` from the HTTP parts passing by, for servers whose request
/// handling is not a channel handler (the async API servers). Add after the HTTP codec.
public final class RequestHeaderTimerHooks: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias InboundOut = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    private var timer: RequestHeaderTimer?

    public init() {}

    public func handlerAdded(context: ChannelHandlerContext) {
        timer = try? context.pipeline.syncOperations.handler(type: RequestHeaderTimer.self)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { timer?.headReceived() }
        context.fireChannelRead(data)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { timer?.awaitNextRequest() }
        context.write(data, promise: promise)
    }
}
