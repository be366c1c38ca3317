import Foundation
import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

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

    private let listener: Channel
    private let connections: Connections
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
        // Each connection is handed to a task of its own as it is set up, not queued for a
        // serving loop: a connection queued when the loop is cancelled would be dropped unused,
        // and swift-nio stops the process then (`Deinited NIOAsyncWriter without calling
        // finish()`, apple/swift-nio#2637; a browser on the dashboard at the demo's Ctrl-C
        // hit it).
        let connections = Connections()
        let serving = Serving(handler: handler, limits: limits, logger: logger)
        let listener: Channel
        do {
            listener = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        // Accepted as the server stops: closed, never wrapped.
                        guard connections.isOpen else {
                            child.close(promise: nil)
                            return
                        }
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
                        let connection = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: child)
                        // `serve` calls `executeThenClose` first thing, cancelled or not.
                        connections.start { await serving.serve(connection) }
                    }
                }
                .bind(host: address.host, port: address.port).get()
        } catch {
            throw MeshError(.invalidAddress, "cannot listen on \(address): \(error); is another process using it?")
        }
        let port = listener.localAddress?.port ?? address.port
        return APIServer(listener: listener, connections: connections, handler: handler, limits: limits, logger: logger,
                         localAddress: HostPort(host: address.host, port: port))
    }

    private init(listener: Channel, connections: Connections, handler: @escaping Handler, limits: Limits, logger: Logger,
                 localAddress: HostPort) {
        self.listener = listener
        self.connections = connections
        self.handler = handler
        self.limits = limits
        self.logger = logger
        self.localAddress = localAddress
    }

    /// Serves until the listening channel closes (see ``close()``) and its connections end;
    /// cancelled, it stops accepting and ends the connections (each closes as its
    /// `executeThenClose` sees the cancellation).
    public func run() async {
        await withTaskCancellationHandler {
            try? await listener.closeFuture.get()
        } onCancel: {
            listener.close(promise: nil)
        }
        let tasks = connections.stop()
        if Task.isCancelled { for task in tasks { task.cancel() } }
        for task in tasks { await task.value }
        logger.debug("API listener stopped", metadata: ["address": "\(localAddress)"])
    }

    /// Stops accepting; connections in flight finish their current request.
    public func close() async {
        try? await listener.close()
    }

}

/// The tasks serving an ``APIServer``'s connections, one each, until the server stops.
private final class Connections: Sendable {
    private struct State {
        var open = true
        var next: UInt64 = 0
        var tasks: [UInt64: Task<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// Whether the server still takes connections.
    var isOpen: Bool { state.withLock { $0.open } }

    /// Runs `body` in a task of its own, kept until it ends (or the server stops).
    func start(_ body: @escaping @Sendable () async -> Void) {
        state.withLock { state in
            let id = state.next
            state.next += 1
            state.tasks[id] = Task {
                await body()
                self.state.withLock { _ = $0.tasks.removeValue(forKey: id) }
            }
        }
    }

    /// No more connections; the tasks of those open now.
    func stop() -> [Task<Void, Never>] {
        state.withLock { state in
            state.open = false
            return Array(state.tasks.values)
        }
    }
}

/// What a connection is served with (made before the listener, which needs it).
private struct Serving: Sendable {
    let handler: APIServer.Handler
    let limits: APIServer.Limits
    let logger: Logger

    func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
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
