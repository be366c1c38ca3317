import Foundation
import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// An HTTP/1.1 server for the JSON APIs (control plane proxy API, operator API, proxy admin),
/// optionally on TLS with SPIFFE verification. Not the data path: a Task per connection is
/// fine here and keeps handlers plain `async` functions.
public final class APIServer: Sendable {
    public typealias Handler = @Sendable (APIRequest) async -> APIResponse

    /// TLS material for one new connection; asked for each connection so that a rotated
    /// certificate applies to the next handshake.
    public typealias TLS = MeshTLS.PeerSetup

    /// Limits that keep a hostile client from holding memory or connections.
    public struct Limits: Sendable {
        public var maxBodyBytes = 1 << 20
        public var headerTimeout: TimeAmount = .seconds(10)
        public var handshakeTimeout: TimeAmount = .seconds(10)
        public var idleTimeout: TimeAmount = .seconds(120)
        public init() {}
    }

    private let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let handler: Handler
    private let limits: Limits
    private let logger: Logger
    /// The address actually bound (port 0 resolved).
    public let localAddress: HostPort

    public static func bind(_ address: HostPort, group: EventLoopGroup, tls: (@Sendable () -> TLS?)? = nil,
                            limits: Limits = Limits(), logger: Logger, handler: @escaping Handler) async throws -> APIServer {
        let idle = limits.idleTimeout
        let headerTimeout = limits.headerTimeout
        let handshakeTimeout = limits.handshakeTimeout
        let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: address.host, port: address.port) { child in
                    child.eventLoop.makeCompletedFuture {
                        let sync = child.pipeline.syncOperations
                        try sync.addHandler(IdleStateHandler(allTimeout: idle))
                        try sync.addHandler(IdleCloseHandler())
                        if let material = tls?() {
                            try sync.addHandler(NIOSSLServerHandler(
                                context: material.context,
                                customVerificationCallbackWithMetadata: SPIFFEVerification.callback(material.verifier, logger: logger)))
                            try sync.addHandler(HandshakeTimeoutHandler(timeout: handshakeTimeout))
                        }
                        // Whole-request deadline for the head: API requests are small, and a
                        // trickling client must not hold a connection (the idle timer resets
                        // on every byte).
                        try sync.addHandler(RequestHeaderTimer(limit: headerTimeout))
                        try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
                        try sync.addHandler(HTTPParseErrorResponder())
                        try sync.addHandler(RequestHeaderTimerHooks())
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: child)
                    }
                }
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on \(address): \(error); is another process using it?")
        }
        let port = channel.channel.localAddress?.port ?? address.port
        return APIServer(channel: channel, handler: handler, limits: limits, logger: logger,
                         localAddress: HostPort(host: address.host, port: port))
    }

    private init(channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>,
                 handler: @escaping Handler, limits: Limits, logger: Logger, localAddress: HostPort) {
        self.channel = channel
        self.handler = handler
        self.limits = limits
        self.logger = logger
        self.localAddress = localAddress
    }

    /// Serves until the listening channel closes (see ``close()``) or the task is cancelled.
    public func run() async {
        await withDiscardingTaskGroup { group in
            do {
                try await channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection) }
                    }
                }
            } catch {
                logger.debug("API listener stopped", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Stops accepting; connections in flight finish their current request.
    public func close() async {
        try? await channel.channel.close()
    }

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let remote = connection.channel.remoteAddress?.ipAddress
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        head = h
                        body.clear()
                    case .body(var chunk):
                        guard body.readableBytes + chunk.readableBytes <= limits.maxBodyBytes else {
                            try await write(APIResponse.error(MeshError(.invalidRequest, "request body exceeds \(limits.maxBodyBytes) bytes")),
                                            keepAlive: false, to: outbound)
                            return
                        }
                        body.writeBuffer(&chunk)
                    case .end:
                        guard let h = head else { continue }
                        let peer = try? await connection.channel.eventLoop.submit {
                            PeerIdentity.of(connection.channel.pipeline.syncOperations)
                        }.get()
                        let request = APIRequest(method: h.method, uri: h.uri, headers: h.headers, body: body,
                                                 peer: peer ?? nil, remoteAddress: remote)
                        let response = await handler(request)
                        try await write(response, keepAlive: h.isKeepAlive, to: outbound)
                        if !h.isKeepAlive { return }
                        head = nil
                    }
                }
            }
        } catch {
            logger.debug("API connection ended", metadata: ["error": "\(error)"])
        }
    }

    private func write(_ response: APIResponse, keepAlive: Bool,
                       to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        var headers = response.headers
        headers.replaceOrAdd(name: "connection", value: keepAlive ? "keep-alive" : "close")
        switch response.body {
        case .bytes(let bytes):
            headers.replaceOrAdd(name: "content-length", value: "\(bytes.readableBytes)")
            try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)))
            try await outbound.write(.body(.byteBuffer(bytes)))
            try await outbound.write(.end(nil))
        case .stream(let chunks):
            headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
            try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers)))
            for await chunk in chunks {
                try await outbound.write(.body(.byteBuffer(chunk)))
            }
            try await outbound.write(.end(nil))
        }
    }
}
