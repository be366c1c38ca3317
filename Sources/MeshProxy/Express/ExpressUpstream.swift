import NIOCore

/// An upstream connection of the express path, and the handler that reads its responses as
/// bytes: the head is parsed in place (``ExpressResponseHead``) and the body is handed on in
/// slices of the buffers read, never copied or re-encoded.
///
/// Made by ``UpstreamPool/acquireExpress(_:clientTLS:bundle:fresh:)`` (TLS handshake and peer
/// check done, as for every upstream connection) and pooled apart from the full stack's
/// connections, whose pipelines differ.
final class ExpressUpstream: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let key: UpstreamKey
    let channel: Channel
    /// Exchanges this connection has carried (1 for a new one).
    var uses = 1
    /// The kernel's retransmission total at the last TCP_INFO sample.
    var reportedRetransmits: UInt32 = 0
    /// The exchange the next response belongs to; set while a request is in flight and
    /// cleared when its response ends or either side closes. Strong, as in
    /// ``UpstreamHandler/responder``: a weak reference would give the handler a side table.
    var responder: ExpressHandler?
    /// The request in flight is a `HEAD`: its answer has no body.
    var requestWasHead = false
    /// Keep the peer proxy's `x-mesh-timing` value (outbound).
    var wantsTiming = false

    private enum Phase {
        case head
        case length(remaining: Int)
        case chunked(ChunkedBody)
        case untilClose
    }

    private var phase = Phase.head
    /// The start of a head that did not arrive in one read.
    private var partialHead: ByteBuffer?
    private static let maxHeadBytes = 64 * 1024
    /// The largest body sent in the head's write (copied behind it): well within one TLS
    /// record (16 KB), and a copy cheaper than the record it saves.
    static let maxInlineBodyBytes = 8 * 1024

    init(key: UpstreamKey, channel: Channel) {
        self.key = key
        self.channel = channel
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var partial = partialHead {
            partialHead = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        while buffer.readableBytes > 0 {
            guard let responder else {
                // Bytes nobody asked for: the connection is out of step, drop it.
                context.close(promise: nil)
                return
            }
            switch phase {
            case .head:
                let outcome = buffer.withUnsafeReadableBytes { bytes in
                    ExpressResponseHead.parse(bytes, requestWasHead: requestWasHead, maxBytes: Self.maxHeadBytes,
                                              wantsTiming: wantsTiming)
                }
                switch outcome {
                case .incomplete:
                    partialHead = buffer
                    return
                case .invalid(let reason):
                    self.responder = nil
                    context.close(promise: nil)
                    responder.responseInvalid("\(reason)")
                    return
                case .parsed(let parsed):
                    if parsed.status == 101 {
                        self.responder = nil
                        context.close(promise: nil)
                        responder.responseInvalid("the upstream switched protocols without a WebSocket upgrade being asked and agreed",
                                                  code: "bad-upgrade")
                        return
                    }
                    if parsed.status < 200 {
                        // An interim answer (103 Early Hints): dropped, as the full stack's
                        // decoder drops it; the final one follows.
                        buffer.moveReaderIndex(forwardBy: parsed.length)
                        continue
                    }
                    // A small body read with its head goes out with it, in one write: towards a
                    // peer proxy one TLS record instead of two (each record is an encryption
                    // here and a decryption there).
                    var inlineBody = 0
                    if case .length(let length) = parsed.framing, length <= Self.maxInlineBodyBytes,
                       buffer.readableBytes - parsed.length >= length {
                        inlineBody = length
                    }
                    buffer.withUnsafeReadableBytes { responder.responseHead(parsed, bytes: $0, inlineBody: inlineBody) }
                    buffer.moveReaderIndex(forwardBy: parsed.length + inlineBody)
                    switch parsed.framing {
                    case .none, .length where inlineBody > 0:
                        // The whole response is out (no body, or all of it with the head).
                        finish(responder, reusable: parsed.keepAlive && buffer.readableBytes == 0)
                        if buffer.readableBytes > 0 { context.close(promise: nil) }
                        return
                    case .length(let length): phase = .length(remaining: length)
                    case .chunked: phase = .chunked(ChunkedBody())
                    case .untilClose: phase = .untilClose
                    }
                    keepAlive = parsed.keepAlive
                }
            case .length(let remaining):
                let take = min(remaining, buffer.readableBytes)
                responder.responseBody(buffer.readSlice(length: take) ?? ByteBuffer(), dataBytes: take)
                if take == remaining {
                    finish(responder, reusable: keepAlive && buffer.readableBytes == 0)
                    if buffer.readableBytes > 0 { context.close(promise: nil) }
                    return
                }
                phase = .length(remaining: remaining - take)
            case .chunked(var body):
                let before = body.dataBytes
                let step = buffer.withUnsafeReadableBytes { body.advance($0) }
                switch step {
                case .invalid(let reason):
                    self.responder = nil
                    context.close(promise: nil)
                    responder.responseInvalid(reason)
                    return
                case .consumed(let count, let done):
                    phase = .chunked(body)
                    responder.responseBody(buffer.readSlice(length: count) ?? ByteBuffer(), dataBytes: body.dataBytes - before)
                    if done {
                        finish(responder, reusable: keepAlive && buffer.readableBytes == 0)
                        if buffer.readableBytes > 0 { context.close(promise: nil) }
                        return
                    }
                }
            case .untilClose:
                responder.responseBody(buffer, dataBytes: buffer.readableBytes)
                return
            }
        }
    }

    /// Whether the response's head allowed reuse of the connection.
    private var keepAlive = true

    private func finish(_ responder: ExpressHandler, reusable: Bool) {
        phase = .head
        self.responder = nil
        responder.responseEnd(reusable: reusable)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        responder?.upstreamReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let responder {
            self.responder = nil
            if case .untilClose = phase {
                // The close is this body's end.
                phase = .head
                responder.responseEnd(reusable: false)
            } else {
                responder.upstreamClosed()
            }
        }
        context.fireChannelInactive()
    }
}
