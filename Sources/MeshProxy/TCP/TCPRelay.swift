import NIOCore

/// Relays bytes between two channels, one ``TCPRelay`` at each end, with backpressure: a side
/// reads only while its partner can take more (the partner's socket buffer is the only
/// buffer, so a slow reader slows the writer down instead of filling memory).
///
/// When either side closes, whatever it had already sent is flushed to the other before that
/// one is closed too. A half-close is carried through: a side whose peer stops sending (a TCP
/// FIN, or TLS 1.3's close_notify on the mesh hop) makes its partner stop sending too
/// (`shutdown(SHUT_WR)`, or close_notify), while the other direction keeps flowing — a client
/// that sends its request and then shuts down its sending side still gets the answer. A side
/// closed in both directions is closed; the idle timeout bounds a half-open one.
final class TCPRelay: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: TCPRelay?
    private var context: ChannelHandlerContext?
    /// Bytes read before the partner exists (a server's greeting that arrives while the
    /// other side is still connecting); bounded by ``maxEarlyBytes``.
    private var early: ByteBuffer?
    private var joined = false
    static let maxEarlyBytes = 1 << 20
    /// A read was asked for while the partner could not take more.
    private var pendingRead = false
    /// Counts the bytes read on this side (sent on to the partner).
    private let onBytes: ((Int) -> Void)?
    /// Called once when this side closes.
    private let onClose: (() -> Void)?
    /// This side's peer sent everything it will send (FIN or close_notify).
    private var inputClosed = false
    /// The partner's peer finished: this side's sending direction is being shut (after the
    /// bytes still queued for it).
    private var outputClosing = false
    /// This side's sending direction is shut: everything for its peer was written.
    private var outputShut = false

    init(onBytes: ((Int) -> Void)? = nil, onClose: (() -> Void)? = nil) {
        self.onBytes = onBytes
        self.onClose = onClose
    }

    /// Joins two relays; call on the event loop that both channels share. Bytes either side
    /// read before are passed on first; a side that closed meanwhile closes the other.
    static func join(_ first: TCPRelay, _ second: TCPRelay) {
        for (relay, other) in [(first, second), (second, first)] {
            relay.joined = true
            relay.partner = other
            if let early = relay.early {
                relay.early = nil
                other.send(early)
                other.flushOut()
            }
        }
        for (relay, other) in [(first, second), (second, first)] where !(relay.context?.channel.isActive ?? false) {
            relay.partner = nil
            other.partnerClosed()
        }
        for (relay, other) in [(first, second), (second, first)] where relay.inputClosed && relay.partner != nil {
            other.partnerFinishedSending()
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // A FIN (or close_notify) becomes an `inputClosed` event rather than a close.
        try? context.channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !inputClosed else { return }
        inputClosed = true
        // Not joined yet: ``join`` passes it on after the early bytes.
        if joined { partner?.partnerFinishedSending() }
        // Done both ways. While this side's output is still being shut, the shutdown's
        // completion closes it instead: closing now would drop the bytes still queued.
        if outputShut { context.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        onBytes?(buffer.readableBytes)
        if joined {
            // Flushed at once rather than at read-complete: bytes handed on by a decoder
            // leaving the pipeline (after a WebSocket upgrade) come without a read-complete.
            partner?.send(buffer)
            partner?.flushOut()
        } else if (early?.readableBytes ?? 0) + buffer.readableBytes > Self.maxEarlyBytes {
            context.close(promise: nil)
        } else if early == nil {
            early = buffer
        } else {
            early?.writeBuffer(&buffer)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClose?()
        if let partner {
            self.partner = nil
            partner.partnerClosed()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset or a TLS error ends the stream; the close reaches the partner above.
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let partner, !partner.isWritable {
            pendingRead = true
        } else {
            context.read()
        }
    }

    private var isWritable: Bool { context?.channel.isWritable ?? false }

    private func send(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func flushOut() {
        context?.flush()
    }

    private func partnerBecameWritable() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    /// The partner's peer will send nothing more: after what it sent, shut this side's sending
    /// direction (or close, when this side's peer is done sending too).
    private func partnerFinishedSending() {
        guard let context, !outputClosing else { return }
        outputClosing = true
        let channel = context.channel
        // Writes complete in order: the empty write's completion means all earlier bytes are out.
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
            if self.inputClosed {
                channel.close(promise: nil)
                return
            }
            channel.close(mode: .output).assumeIsolated().whenComplete { result in
                self.outputShut = true
                if case .failure = result { channel.close(promise: nil) } else if self.inputClosed { channel.close(promise: nil) }
            }
        }
    }

    /// The partner is gone: flush what it sent, then close (writes complete in order, so the
    /// empty write's completion means all earlier ones are on the wire).
    private func partnerClosed() {
        partner = nil
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

