import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL

/// HTTP/2 in the data path (gRPC and any h2 traffic), built on swift-nio-http2.
///
/// Each HTTP/2 stream becomes a child channel whose HTTP/2 frames are mapped to HTTP/1-style
/// parts (`HTTP2FramePayloadTo…Codec`), so the same ``ProxyHTTPHandler`` handles a stream as it
/// handles an HTTP/1.1 connection: policy, routing, balancing, retries, timeouts, metrics.
/// Trailers (`grpc-status`) travel as the parts' `.end(trailers)`.
///
/// The protocol follows the request, as in Linkerd: an h2 request from the app goes to the
/// peer proxy over HTTP/2 (TLS, ALPN `h2`) and on to the app over HTTP/2 (prior-knowledge
/// h2c), streams multiplexed on one connection per upstream; HTTP/1.1 requests keep their
/// HTTP/1.1 path. Limits: swift-nio-http2's defaults (100 concurrent streams, its flood and
/// header-list limits, DESIGN.md §6), except for stream resets, bounded by who opened the
/// connection (``streamConfiguration(for:)``: the local app's gRPC cancellations, a peer
/// proxy's relayed ones, this proxy's own connections). The client side (the pool's
/// connections, a stream per exchange) is in UpstreamPool+HTTP2.swift.
///
/// Every h2 connection has a ``FlushCoalescer`` under its HTTP/2 handler: the streams written
/// in one event-loop tick go out in one flush, their small frames copied together (one TLS
/// record for many frames instead of one per frame buffer).
///
/// swift-nio-http2 meets a flood (of resets, stream errors, control frames …) with a GOAWAY
/// and an error in the pipeline, and leaves the closing to the pipeline: every h2 connection
/// ends there (``HTTP2ConnectionGuard``, ``HTTP2GoAwayWatcher``), or it would stay open with
/// the peer no longer answering on it.
enum HTTP2Stack {
    /// Who opened an h2 connection to this proxy, which decides how many stream resets it may
    /// send (``streamConfiguration(for:)``).
    enum Caller {
        /// The app this sidecar serves, on its outbound listener.
        case localApp
        /// A peer proxy (mTLS, ALPN `h2`), relaying many callers' streams.
        case peerProxy
        /// Anyone else: swift-nio-http2's defaults.
        case other
    }

    /// The server side of an h2 connection: every stream gets the HTTP/1 codec and its own
    /// ``ProxyHTTPHandler``; the streams share the connection's ``ConnectionPeer``.
    static func configureServer(_ pipeline: ChannelPipeline.SynchronousOperations, role: String, caller: Caller,
                                router: @escaping Router, states: LoopStates, logger: Logger) throws {
        try pipeline.addHandler(FlushCoalescer())
        let peer = NIOLoopBound(ConnectionPeer(), eventLoop: pipeline.eventLoop)
        _ = try pipeline.configureHTTP2Pipeline(mode: .server, connectionConfiguration: .init(),
                                                streamConfiguration: streamConfiguration(for: caller)) { stream in
            stream.eventLoop.makeCompletedFuture {
                let sync = stream.pipeline.syncOperations
                try sync.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try sync.addHandler(ProxyHTTPHandler(role: role, router: router, connectionPeer: peer.value, states: states,
                                                     logger: logger))
            }
        }
        try pipeline.addHandler(HTTP2ConnectionGuard(role: role, logger: logger))
    }

    /// How many RST_STREAM frames a connection may bring before swift-nio-http2 ends it.
    ///
    /// Its default, 200 per 30 s, is a defence for servers against clients that reset streams
    /// they opened (CVE-2023-44487), and it stays for callers the proxy knows nothing of. The
    /// app's own gRPC client resets a stream for every call it gives up on (a deadline, a
    /// cancellation): at 200 such calls in 30 s its sidecar cut the app's connection, failing
    /// the calls on it. The app gets 1000 a second: a storm of deadlines at a busy client's
    /// rate, while a runaway or hostile app is still cut off (each reset stream costs this
    /// proxy a stream's set-up). A peer proxy relays the resets of all its callers
    /// (``relayedResetsConfiguration``).
    static func streamConfiguration(for caller: Caller) -> NIOHTTP2Handler.StreamConfiguration {
        switch caller {
        case .peerProxy:
            return relayedResetsConfiguration
        case .localApp:
            var configuration = NIOHTTP2Handler.StreamConfiguration()
            configuration.streamResetFrameRateLimit.maximumCount = 1000
            configuration.streamResetFrameRateLimit.windowLength = .seconds(1)
            return configuration
        case .other:
            return .init()
        }
    }

    /// The stream settings of a connection whose resets are normal traffic: one this proxy
    /// opens (to the app or a peer proxy), and one a peer proxy opened to this one.
    ///
    /// A server may answer before it has read the request and then stop the upload with
    /// RST_STREAM(NO_ERROR) (RFC 9113 §8.1); nginx does so after every answer to a POST it did
    /// not read, and a proxy whose caller is still sending resets its stream to the peer then.
    /// swift-nio-http2 allows 200 resets per 30 s, a defence for servers against clients that
    /// reset streams they opened (CVE-2023-44487): it cut the connection to such an app after
    /// 200 requests with a body (a GOAWAY the pool did not see, then requests waiting until
    /// the app's idle timeout), and the connection between two proxies every few hundred
    /// early answers to uploads (the streams on it failed). On a connection this proxy opened,
    /// a reset can only end a stream it opened; a peer proxy's resets are those of callers its
    /// own listener already held to a bound (``streamConfiguration(for:)``), many callers on
    /// one connection. The bound is kept only against a burst no real peer sends (more than
    /// 1000 within 10 ms, while at most 100 streams are open at once); floods of frames for
    /// unknown streams still meet the stream error and glitch limits.
    static var relayedResetsConfiguration: NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.streamResetFrameRateLimit.maximumCount = 1000
        configuration.streamResetFrameRateLimit.windowLength = .milliseconds(10)
        return configuration
    }

    /// Whether `error`, seen in an h2 connection's pipeline, is one swift-nio-http2 has ended
    /// the connection for: it sent GOAWAY with last stream 0 (every stream is given up) and
    /// expects the connection to be closed. Stream errors and others reach the pipeline too;
    /// those leave the connection in use.
    static func endsConnection(_ error: Error) -> Bool {
        switch error {
        case is NIOHTTP2Errors.ExcessiveRSTFrames, is NIOHTTP2Errors.ExcessiveStreamErrors,
             is NIOHTTP2Errors.ExcessiveNumberOfGlitches, is NIOHTTP2Errors.ExcessiveControlFrames,
             is NIOHTTP2Errors.ExcessiveEmptyDataFrames, is NIOHTTP2Errors.ExcessiveContinuationFrames,
             is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering:
            return true
        default:
            return false
        }
    }
}

/// The last handler of an h2 connection this proxy serves: closes the connection when
/// swift-nio-http2 has given it up (``HTTP2Stack/endsConnection(_:)``), so that the client
/// opens a new one instead of sending on a connection nobody serves.
final class HTTP2ConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    private let role: String
    private let logger: Logger

    init(role: String, logger: Logger) {
        self.role = role
        self.logger = logger
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard HTTP2Stack.endsConnection(error) else {
            context.fireErrorCaught(error)
            return
        }
        logger.info("closing a caller's HTTP/2 connection that swift-nio-http2 gave up",
                    metadata: ["role": "\(role)", "error": "\(error)"])
        context.close(promise: nil)
    }
}

extension HTTP2Stack {
    /// A gRPC "trailers-only" answer (one HEADERS frame that ends the stream) reaches the
    /// handler as a head and an empty end, which would go out as HEADERS and an empty DATA frame
    /// without trailers: the client would lose the status. Its status fields are taken out of
    /// the head here, to go out as trailers (a valid answer with no messages); nil when the
    /// head carries no `grpc-status`.
    static func takeTrailersOnlyStatus(_ headers: inout HTTPHeaders) -> HTTPHeaders? {
        guard headers.contains(name: "grpc-status") else { return nil }
        var trailers = HTTPHeaders()
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            for value in headers[name] { trailers.add(name: name, value: value) }
            headers.remove(name: name)
        }
        return trailers
    }
}
