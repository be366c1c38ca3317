import Foundation
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import MeshTransport

/// What a listener decided to do with one request.
enum RouteDecision {
    /// Forward `head` to the first candidate that accepts a connection (a candidate is only
    /// tried after the previous one failed to connect, so the request is never sent twice).
    /// `subset`: the instance labels a route or split chose (outbound); retries stay in it.
    /// `route`: the TrafficPolicy route the request matched (its timeouts and retries apply).
    case forward(candidates: [UpstreamKey], head: HTTPRequestHead, subset: [String: String]? = nil, route: Int? = nil)
    /// Answer locally, e.g. 503 for an unknown service; `code` goes in `x-mesh-error`.
    case respond(HTTPResponseStatus, code: String, message: String)
    /// 403 by policy: the decision code and a correlation id go to the caller, the details
    /// only to the proxy's log.
    case deny(code: String, requestID: String)
}

/// What a listener knows about the downstream connection.
struct DownstreamInfo {
    /// The caller's verified SPIFFE ID (inbound mTLS only).
    var peer: SPIFFEID? {
        didSet { peerHeaderValue = peer?.description }
    }
    /// `peer` as the header value, formatted once per connection rather than per request.
    private(set) var peerHeaderValue: String?
    var remoteAddress: SocketAddress?
    /// The caller's labels, looked up in the registry once per connection (and again when
    /// the registry changes).
    var callerLabels: [String: String] = [:]
    var callerLabelsVersion: UInt64?
    /// A connection-level (L4) decision, reused while the registry/policy version holds.
    var l4Decision: (version: UInt64, allowed: Bool, code: String, policy: String?)?
    /// The authorization decision of the current request (inbound), for the access log.
    var lastDecision: (code: String, policy: String?)?

    init(peer: SPIFFEID? = nil, remoteAddress: SocketAddress? = nil) {
        self.peer = peer
        self.peerHeaderValue = peer?.description
        self.remoteAddress = remoteAddress
    }
}

/// Decides per request. Runs on the event loop with that loop's state: it must not block.
///
/// The head is the router's to change and hand on in ``RouteDecision/forward(candidates:head:subset:route:)``:
/// passed as the caller's last use of it, a field added on the way (the inbound peer identity)
/// goes into the same field storage instead of a copy of it (~1k instructions a request).
typealias Router = @Sendable (consuming HTTPRequestHead, inout DownstreamInfo, LoopState) -> RouteDecision

/// Inbound: whether a connection that left HTTP (a WebSocket) may stay open, asked again with
/// the upgrade request as it was authorized whenever the policies change.
typealias StreamAuthorizer = @Sendable (HTTPRequestHead, inout DownstreamInfo, LoopState) -> Bool

extension ServerBootstrap {
    /// The socket options every data-path listener uses: a deep accept backlog, address
    /// reuse for quick restarts, and no Nagle delay on accepted connections.
    static func dataPath(group: EventLoopGroup) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    }
}

extension ClientBootstrap {
    /// Every upstream connection of the data path: on the caller's loop, the connect timeout,
    /// no Nagle delay.
    static func dataPath(on eventLoop: EventLoop, limits: ProxyLimits) -> ClientBootstrap {
        ClientBootstrap(group: eventLoop)
            .connectTimeout(limits.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The client side of an mTLS hop to a peer proxy: the peer must pass `verifier`.
    func addPeerTLS(_ context: NIOSSLContext, verifier: SPIFFEPeerVerifier) throws {
        try addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil,
                                               customVerificationCallbackWithMetadata: SPIFFEVerification.callback(verifier)))
    }
}

/// Header hygiene shared by both directions.
enum ProxyHeaders {
    /// The header that tells an app who called; set by the inbound proxy only.
    static let peerIdentity = "x-mesh-peer-identity"
    static let error = "x-mesh-error"
    /// The policy decision code on a 403.
    static let decision = "x-mesh-decision"
    /// Correlates a denial with the proxy's log line.
    static let requestID = "x-mesh-request-id"
    /// Set by the outbound proxy on an HTTP/1.1 request it carries over HTTP/2 to the peer
    /// proxy, which then talks HTTP/1.1 to its app; never reaches an app.
    static let originalProtocol = "x-mesh-orig-proto"
    static let hopByHop = ["connection", "keep-alive", "proxy-connection", "upgrade", "proxy-authenticate"]

    /// The path of a request target, without its query: `/a/b?x=1` → `/a/b`. Found on the
    /// UTF-8 bytes (a `Character` scan costs grapheme breaking on every request).
    static func path(of uri: String) -> Substring {
        guard let query = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return uri[...] }
        return uri[..<query]
    }

    /// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
    static func stripHopByHop(_ headers: inout HTTPHeaders) {
        // Fast path: most messages carry none of these, or only `Connection: keep-alive` or
        // `close`; a scan that allocates nothing is cheaper than removals.
        var present = false
        var namesOthers = false
        for (name, value) in headers where isHopByHop(name) {
            present = true
            if name.utf8.count == 10, name.equalsLowercaseASCII("connection") {
                forEachToken(of: value) { token in
                    if !token.elementsEqual("close".utf8) && !token.elementsEqual("keep-alive".utf8) { namesOthers = true }
                }
            }
        }
        guard present else { return }
        if namesOthers {
            let named = headers[canonicalForm: "connection"].map { $0.lowercased() }
            for name in named where name != "close" && name != "keep-alive" { headers.remove(name: String(name)) }
        }
        for name in hopByHop { headers.remove(name: name) }
    }

    private static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 7: return name.equalsLowercaseASCII("upgrade")
        case 10: return name.equalsLowercaseASCII("connection") || name.equalsLowercaseASCII("keep-alive")
        case 16: return name.equalsLowercaseASCII("proxy-connection")
        case 18: return name.equalsLowercaseASCII("proxy-authenticate")
        default: return false
        }
    }

    /// Whether the connection stays open after this message: HTTP/1.1 unless `Connection`
    /// says `close`, HTTP/1.0 only when it says `keep-alive`. Without allocating (NIO's
    /// `isKeepAlive` splits the header into an array).
    static func isKeepAlive(version: HTTPVersion, _ headers: HTTPHeaders) -> Bool {
        var close = false
        var keepAlive = false
        for (name, value) in headers where name.utf8.count == 10 && name.equalsLowercaseASCII("connection") {
            forEachToken(of: value) { token in
                if token.elementsEqual("close".utf8) { close = true } else if token.elementsEqual("keep-alive".utf8) { keepAlive = true }
            }
        }
        if close { return false }
        return version.major > 1 || (version.major == 1 && version.minor >= 1) || keepAlive
    }

    /// Calls `body` with each comma-separated token of a header value, trimmed and lowercased
    /// (tokens over 32 bytes are passed as they are: no token we look for is that long).
    static func forEachToken(of value: String, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        var value = value
        value.withUTF8 { bytes in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { scratch in
                var start = 0
                while start <= bytes.count {
                    var end = start
                    while end < bytes.count, bytes[end] != UInt8(ascii: ",") { end += 1 }
                    var lower = start
                    var upper = end
                    while lower < upper, bytes[lower] == 0x20 || bytes[lower] == 0x09 { lower += 1 }
                    while upper > lower, bytes[upper - 1] == 0x20 || bytes[upper - 1] == 0x09 { upper -= 1 }
                    if upper - lower <= 32 {
                        for i in lower..<upper {
                            let byte = bytes[i]
                            scratch[i - lower] = byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
                        }
                        body(UnsafeBufferPointer(rebasing: scratch[0..<(upper - lower)]))
                    } else {
                        body(UnsafeBufferPointer(rebasing: bytes[lower..<upper]))
                    }
                    start = end + 1
                }
            }
        }
    }

    /// Makes the body framing of a request to forward unambiguous, or says why it cannot be.
    ///
    /// The decoder has already read the body by its own rules; the encoder on the upstream
    /// side must frame the same bytes the same way, or the upstream could read part of the
    /// body as a second, unchecked request (smuggling). So: `Transfer-Encoding` must be
    /// exactly `chunked` (once) and wins over `Content-Length`, which is then dropped; TRACE
    /// carries no body; and every request goes upstream as HTTP/1.1.
    static func sanitizeFraming(_ head: inout HTTPRequestHead, http2: Bool = false) -> String? {
        // One scan first: a request with at most one Content-Length and neither
        // Transfer-Encoding nor TE (nearly all), or over HTTP/2 with the one `te: trailers`
        // (every gRPC call), needs no change.
        var transferEncoding = false
        var lengths = 0
        var te = 0
        var teTrailers = false
        for (name, value) in head.headers {
            switch name.utf8.count {
            case 17 where name.equalsLowercaseASCII("transfer-encoding"): transferEncoding = true
            case 14 where name.equalsLowercaseASCII("content-length"): lengths += 1
            case 2 where name.equalsLowercaseASCII("te"):
                te += 1
                teTrailers = value.equalsLowercaseASCII("trailers")
            default: break
            }
        }
        if !transferEncoding && lengths <= 1 && (te == 0 || (http2 && te == 1 && teTrailers)) {
            if head.method == .TRACE && lengths == 1 && (head.headers.first(name: "content-length").flatMap(Int.init) ?? 0) > 0 {
                return "a TRACE request must not carry a body"
            }
            head.version = .http1_1
            return nil
        }
        let encodings = head.headers["transfer-encoding"]
        if !encodings.isEmpty {
            guard encodings.count == 1, encodings[0].trimmingCharacters(in: .whitespaces).lowercased() == "chunked" else {
                return "Transfer-Encoding must be exactly 'chunked'"
            }
            head.headers.remove(name: "transfer-encoding")
            head.headers.remove(name: "content-length")
            head.headers.add(name: "transfer-encoding", value: "chunked")
        } else {
            let lengths = head.headers["content-length"]
            if lengths.count > 1 && Set(lengths).count > 1 { return "conflicting Content-Length headers" }
            if lengths.count > 1 {
                head.headers.remove(name: "content-length")
                head.headers.add(name: "content-length", value: lengths[0])
            }
        }
        if head.method == .TRACE && (!encodings.isEmpty || (head.headers.first(name: "content-length").flatMap(Int.init) ?? 0) > 0) {
            return "a TRACE request must not carry a body"
        }
        // HTTP/2 keeps `te: trailers` (the one value it allows; gRPC servers insist on it).
        let trailers = http2 && head.headers["te"].map { $0.lowercased() } == ["trailers"]
        head.headers.remove(name: "te")
        if trailers { head.headers.add(name: "te", value: "trailers") }
        head.version = .http1_1
        return nil
    }

    /// Marks an HTTP/1.1 request (framing already sanitized) that rides HTTP/2 to the peer
    /// proxy. HTTP/2 keeps `Content-Length` but has no `Transfer-Encoding`, so the marker says
    /// whether the body was chunked: the peer needs that to frame the body for its app.
    static func markHTTP1(_ headers: inout HTTPHeaders) {
        let chunked = headers.contains(name: "transfer-encoding")
        headers.add(name: originalProtocol, value: chunked ? "HTTP/1.1; chunked" : "HTTP/1.1")
    }

    /// The peer's side of ``markHTTP1``: the framing headers the app gets. A request that was
    /// neither chunked nor had a `Content-Length` had no body (`withoutBody`), whatever the
    /// HTTP/2 layer may add for its method.
    static func restoreHTTP1Framing(_ headers: inout HTTPHeaders, marker: String, withoutBody: inout Bool) {
        headers.remove(name: "transfer-encoding")
        if marker.hasSuffix("; chunked") {
            headers.remove(name: "content-length")
            headers.add(name: "transfer-encoding", value: "chunked")
        } else if !headers.contains(name: "content-length") {
            withoutBody = true
        }
    }

    /// Whether a header name is the identity header in any spelling an app might fold it to
    /// (`X-Mesh-Peer-Identity`, `x_mesh_peer_identity`, …).
    static func isPeerIdentityHeader(_ name: String) -> Bool {
        name.utf8.count == peerIdentity.utf8.count
            && name.lowercased().replacingOccurrences(of: "_", with: "-") == peerIdentity
    }

    /// Removes every spelling of the identity header.
    static func removePeerIdentity(_ headers: inout HTTPHeaders) {
        // Scan first: almost no request carries one, and the scan allocates nothing.
        guard headers.contains(where: { isPeerIdentityHeader($0.name) }) else { return }
        for name in Set(headers.filter { isPeerIdentityHeader($0.name) }.map(\.name)) { headers.remove(name: name) }
    }

    /// Checks the DESIGN.md §6 header limits; nil when within them.
    static func exceedsLimits(_ head: HTTPRequestHead, limits: ProxyLimits) -> String? {
        if head.headers.count > limits.maxRequestHeaderFields {
            return "request has \(head.headers.count) header fields, the limit is \(limits.maxRequestHeaderFields)"
        }
        var bytes = head.uri.utf8.count
        for (name, value) in head.headers { bytes += name.utf8.count + value.utf8.count + 4 }
        if bytes > limits.maxRequestHeaderBytes {
            return "request headers are \(bytes) bytes, the limit is \(limits.maxRequestHeaderBytes)"
        }
        return nil
    }
}

extension String {
    /// ASCII case-insensitive equality with a lowercase ASCII string, without allocating
    /// (`lowercased()` makes a new string).
    func equalsLowercaseASCII(_ lowercase: String) -> Bool {
        guard utf8.count == lowercase.utf8.count else { return false }
        for (byte, expected) in zip(utf8, lowercase.utf8) {
            let folded = byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
            if folded != expected { return false }
        }
        return true
    }
}

extension HTTPMethod {
    /// Whether a request may be sent again after it reached an upstream that then failed
    /// (RFC 9110 §9.2.2): the proxies replay only these, unless the TrafficPolicy allows it
    /// (`retryNonIdempotent`).
    var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE: true
        default: false
        }
    }
}
