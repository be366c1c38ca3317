import NIOCore

/// Closes a downstream connection whose request headers take longer than the limit to
/// arrive, counted from the first byte of the request (slowloris). Sits before the HTTP
/// decoder, on raw bytes; ``ProxyHTTPHandler`` tells it when a head is complete and when the
/// connection is waiting for the next request.
final class RequestHeaderTimer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: TimeAmount
    private var waitingForHead = true
    private var timer: Scheduled<Void>?

    init(limit: TimeAmount) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if waitingForHead && timer == nil {
            let channel = context.channel
            timer = context.eventLoop.scheduleTask(in: limit) { channel.close(promise: nil) }
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    /// A complete request head arrived: the body may take as long as it needs.
    func headReceived() {
        waitingForHead = false
        timer?.cancel()
        timer = nil
    }

    /// The exchange ended; the next bytes start the next request's clock.
    func awaitNextRequest() {
        waitingForHead = true
    }
}
