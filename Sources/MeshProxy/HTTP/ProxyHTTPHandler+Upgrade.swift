import MeshTransport
import NIOCore
import NIOHTTP1

/// WebSocket (HTTP/1.1 `Upgrade: websocket`) through the proxy.
///
/// The upgrade request is authorized, routed and balanced like any request, and goes upstream
/// with its `Connection: upgrade` / `Upgrade: websocket` (hop-by-hop headers, re-added on
/// purpose for this one protocol; `h2c` and others are stripped). When the upstream answers
/// `101 Switching Protocols`, the 101 goes downstream and both connections stop being HTTP:
/// their HTTP handlers leave the pipelines and a ``TCPRelay`` pair carries the frames, with
/// backpressure and the idle timeout of the connection. Any other answer is relayed as usual
/// and the downstream connection closes after it (its parser stopped at the upgrade request).
extension ProxyHTTPHandler {
    /// Whether a request asks to become a WebSocket.
    static func isWebSocketUpgrade(_ head: HTTPRequestHead) -> Bool {
        guard let upgrade = head.headers.first(name: "upgrade"), upgrade.lowercased() == "websocket" else { return false }
        return head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// Puts back the two headers an upgrade needs after hop-by-hop stripping.
    static func markUpgrade(_ headers: inout HTTPHeaders) {
        headers.replaceOrAdd(name: "connection", value: "upgrade")
        headers.replaceOrAdd(name: "upgrade", value: "websocket")
    }

    /// The upstream agreed (101): the response head goes downstream, the exchange is recorded
    /// (status 101), and — once the decoders are done with the current read — both
    /// connections become a byte relay.
    func switchToWebSocket(_ head: HTTPResponseHead, upstream: UpstreamConnection, context: ChannelHandlerContext) {
        cancelTimers()
        var head = head
        ProxyHeaders.stripHopByHop(&head.headers)
        Self.markUpgrade(&head.headers)
        exchange.responseHead = Exchange.now()
        exchange.status = 101
        exchangeTiming(&head.headers)
        replay = nil
        state = .upgraded
        upstream.handler.responder = nil
        upstream.handler.upgraded = true
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols,
                                                                     headers: head.headers))), promise: nil)
        exchange.settleEndpoint(failed: false, logger: logger)
        recordExchange()
        finishExchange()
        if let authorize = streamAuthorizer, let upgradeHead, let loopState {
            // Allowed when it opened, but not for ever: like a TCP stream, the WebSocket is
            // checked again whenever the policies change, and closed once they deny it.
            let stream = OpenStream(channel: context.channel, info: info, appPort: 0) { [weak loopState] stream in
                guard let loopState else { return true }
                return authorize(upgradeHead, &stream.info, loopState)
            }
            loopState.track(stream)
            // Policies that changed while the app was answering the upgrade were checked
            // before this socket was tracked: check it now.
            if loopState.generation != upgradeGeneration, !stream.stillAllowed(stream) {
                context.close(promise: nil)
                upstream.channel.close(promise: nil)
                return
            }
        }
        // After the current read: a decoder that is still delivering parts of this read must
        // not hand an HTTP part to the relay.
        let downstream = context.channel
        let loopBound = NIOLoopBound((self, upstream), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, upstream) = loopBound.value
            handler.becomeRelay(downstream: downstream, upstream: upstream)
        }
    }

    private func becomeRelay(downstream: Channel, upstream: UpstreamConnection) {
        do {
            let downRelay = TCPRelay()
            let upRelay = TCPRelay()
            let down = downstream.pipeline.syncOperations
            // The HTTP handler kept the idle timeout; the relay's connection gets its own.
            if let idle = flow.idleTimeout {
                try down.addHandler(IdleStateHandler(allTimeout: idle))
                try down.addHandler(IdleCloseHandler())
            }
            try down.addHandler(downRelay)
            remove(RequestHeaderTimer.self, from: down)
            remove(NIOHTTPResponseHeadersValidator.self, from: down)
            remove(HTTPResponseEncoder.self, from: down)
            remove(ProxyHTTPHandler.self, from: down)
            remove(ByteToMessageHandler<HTTPRequestDecoder>.self, from: down)
            let up = upstream.channel.pipeline.syncOperations
            try up.addHandler(upRelay)
            remove(UpstreamHandler.self, from: up)
            remove(NIOHTTPRequestHeadersValidator.self, from: up)
            remove(HTTPRequestEncoder.self, from: up)
            // The response decoder goes last: it hands on the bytes it holds past the 101
            // (frames the server sent at once), and they must reach the relay.
            remove(ByteToMessageHandler<HTTPResponseDecoder>.self, from: up)
            TCPRelay.join(downRelay, upRelay)
            upstream.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            downstream.read()
            upstream.channel.read()
        } catch {
            logger.warning("cannot switch the connection to WebSocket", metadata: ["error": "\(error)"])
            downstream.close(promise: nil)
            upstream.channel.close(promise: nil)
        }
    }

    private func remove<Handler: RemovableChannelHandler>(_ type: Handler.Type, from pipeline: ChannelPipeline.SynchronousOperations) {
        if let handler = try? pipeline.handler(type: type) {
            pipeline.removeHandler(handler, promise: nil)
        }
    }
}
