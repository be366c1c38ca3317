import Foundation
import Logging
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A small HTTP/1.1 client for the JSON APIs, on mTLS to the control plane or plain HTTP to an
/// admin port. One connection per call: these calls are rare (join, renew, heartbeat), and a
/// fresh handshake always uses the current SVID.
public struct APIClient: Sendable {
    public typealias TLS = MeshTLS.PeerSetup

    public let target: HostPort
    public let group: EventLoopGroup
    public let tls: TLS?
    public var connectTimeout: TimeAmount = .seconds(5)
    public var requestTimeout: Duration = .seconds(15)
    public var maxResponseBytes = 4 << 20
    public var bearerToken: String?
    /// `Host` header to send; defaults to the target address. An app calling through its
    /// outbound sidecar sets the service name here.
    public var hostHeader: String?
    /// Further request headers (tests use this to send hostile ones).
    public var extraHeaders: [(String, String)] = []
    /// Other addresses of the same service (control plane replicas), tried in turn when one
    /// cannot be reached or answers 503; `preference` remembers the one that worked.
    public var alternates: [HostPort] = []
    public var preference: TargetPreference?

    public init(target: HostPort, group: EventLoopGroup, tls: TLS?, bearerToken: String? = nil) {
        self.target = target
        self.group = group
        self.tls = tls
        self.bearerToken = bearerToken
    }

    public struct Response: Sendable {
        public var status: HTTPResponseStatus
        public var headers: HTTPHeaders = [:]
        public var body: ByteBuffer
        public var text: String { String(buffer: body) }

        public func decode<T: Decodable>(_ type: T.Type) throws -> T {
            guard status.code < 300 else {
                if let error = try? JSONCoding.decoder.decode(ControlAPI.ErrorBody.self, from: Data(body.readableBytesView)) {
                    throw MeshError(MeshError.Code(rawValue: error.code), error.message)
                }
                throw MeshError(.protocolError, "server answered \(status.code): \(text.prefix(200))")
            }
            do {
                return try JSONCoding.decoder.decode(T.self, from: Data(body.readableBytesView))
            } catch {
                throw MeshError(.protocolError, "server answered with a body that is not \(T.self): \(text.prefix(200))")
            }
        }
    }

    /// Sends one request with a JSON body (or none) and reads the whole response.
    public func send<Body: Encodable>(_ method: HTTPMethod, _ path: String, json: Body?) async throws -> Response {
        let payload = try json.map { try JSONCoding.encoder.encode($0) }
        // Each replica in turn, from the preferred one, while they are unreachable, hung
        // (each attempt has its own `requestTimeout`) or unavailable (503: a replica without
        // its database); the last answer stands. Once a request has been sent, it goes to
        // another replica only if `retryAfterSend` (not for a join, which spends a token).
        let order = targetOrder
        var lastError: Error?
        for (index, target) in order.enumerated() {
            let last = index == order.count - 1
            do {
                let response = try await withTimeout(requestTimeout) {
                    try await self.sendOnce(method, path, body: payload, to: target)
                }
                if response.status == .serviceUnavailable, !last {
                    preference?.failed(target, next: order[index + 1])
                    continue
                }
                preference?.succeeded(target)
                return response
            } catch let error as MeshError where error.code == .unavailable && !last {
                lastError = error
                guard retryAfterSend || error.message.hasPrefix(Self.connectFailurePrefix) else { throw error }
                preference?.failed(target, next: order[index + 1])
            }
        }
        throw lastError ?? MeshError(.unavailable, "no address to call")
    }

    /// Whether a request already sent may be sent again to another replica.
    public var retryAfterSend = true
    static let connectFailurePrefix = "cannot connect to "

    /// The target first, or the preferred one, then the others in order.
    private var targetOrder: [HostPort] {
        let all = [target] + alternates
        guard let preferred = preference?.current, let start = all.firstIndex(of: preferred) else { return all }
        return Array(all[start...] + all[..<start])
    }

    private func sendOnce(_ method: HTTPMethod, _ path: String, body payload: Data?, to target: HostPort) async throws -> Response {
        try await self.exchange(method, path, body: payload, to: target) { inbound in
            var status: HTTPResponseStatus = .ok
            var headers: HTTPHeaders = [:]
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let head):
                    status = head.status
                    headers = head.headers
                case .body(var chunk):
                    guard body.readableBytes + chunk.readableBytes <= maxResponseBytes else {
                        throw MeshError(.protocolError, "response from \(target) exceeds \(maxResponseBytes) bytes")
                    }
                    body.writeBuffer(&chunk)
                case .end: return Response(status: status, headers: headers, body: body)
                }
            }
            throw MeshError(.unavailable, "\(target) closed the connection before answering")
        }
    }

    public func get(_ path: String) async throws -> Response {
        try await send(.GET, path, json: Optional<String>.none)
    }

    /// Opens a streaming GET and hands each newline-delimited line of the body to `onLine`
    /// until the server ends the stream or the connection drops.
    /// - Parameter readTimeout: the stream is considered dead when nothing (not even a
    ///   keepalive line) arrives for this long; the call then fails so the caller reconnects.
    /// - Parameter onKeepalive: called for every empty line (the server's keepalive).
    public func streamLines(_ path: String, maxLineBytes: Int = 4 << 20, readTimeout: TimeAmount? = nil,
                            onKeepalive: @Sendable () -> Void = {},
                            onLine: @Sendable (Substring) async throws -> Void) async throws {
        // Connects to the first replica that answers (see `send`); a stream that breaks later
        // is the caller's to reopen.
        let order = targetOrder
        var connected: (channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>, target: HostPort)?
        for (index, candidate) in order.enumerated() where connected == nil {
            do {
                connected = (try await connect(candidate, readTimeout: readTimeout), candidate)
                preference?.succeeded(candidate)
            } catch where error is MeshError && index < order.count - 1 {
                preference?.failed(candidate, next: order[index + 1])
            }
        }
        guard let (channel, target) = connected else { throw MeshError(.unavailable, "no address to call") }
        try await exchange(.GET, path, body: nil, on: channel, to: target) { inbound in
            var pending = ByteBuffer()
            var refused: HTTPResponseStatus?
            for try await part in inbound {
                switch part {
                case .head(let head):
                    if head.status != .ok { refused = head.status }
                case .body(var chunk) where refused != nil:
                    // The error body says why; keep what a message needs, no more.
                    if pending.readableBytes < 64 << 10 { pending.writeBuffer(&chunk) }
                case .end where refused != nil:
                    let status = refused ?? .internalServerError
                    // A replica that cannot serve the stream (503): the next attempt goes elsewhere.
                    if status == .serviceUnavailable, let index = order.firstIndex(of: target), order.count > 1 {
                        preference?.failed(target, next: order[(index + 1) % order.count])
                    }
                    let body = try? JSONDecoder().decode(ControlAPI.ErrorBody.self, from: Data(pending.readableBytesView))
                    throw MeshError(body.map { MeshError.Code(rawValue: $0.code) } ?? .unavailable,
                                    "\(target) refused the stream: \(body?.message ?? "status \(status.code)")")
                case .body(var chunk):
                    pending.writeBuffer(&chunk)
                    while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                        let length = newline - pending.readerIndex
                        let line = pending.readString(length: length) ?? ""
                        pending.moveReaderIndex(forwardBy: 1)
                        if line.isEmpty { onKeepalive() } else { try await onLine(Substring(line)) }
                    }
                    guard pending.readableBytes <= maxLineBytes else {
                        throw MeshError(.protocolError, "a line from \(target) exceeds \(maxLineBytes) bytes")
                    }
                    pending.discardReadBytes()
                case .end: return
                }
            }
            throw MeshError(.unavailable, "\(target) closed the stream (or it went silent)")
        }
    }

    private func exchange<T: Sendable>(_ method: HTTPMethod, _ path: String, body: Data?, to target: HostPort,
                                       read: (NIOAsyncChannelInboundStream<HTTPClientResponsePart>) async throws -> T) async throws -> T {
        try await exchange(method, path, body: body, on: try await connect(target, readTimeout: nil), to: target, read: read)
    }

    private func connect(_ target: HostPort, readTimeout: TimeAmount?) async throws
        -> NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> {
        do {
            return try await ClientBootstrap(group: group)
                .connectTimeout(connectTimeout)
                .connect(host: target.host, port: target.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        if let tls {
                            try sync.addHandler(try NIOSSLClientHandler(
                                context: tls.context, serverHostname: nil,
                                customVerificationCallbackWithMetadata: SPIFFEVerification.callback(tls.verifier)))
                        }
                        if let readTimeout {
                            try sync.addHandler(IdleStateHandler(readTimeout: readTimeout))
                            try sync.addHandler(IdleCloseHandler())
                        }
                        try sync.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw MeshError(.unavailable, "\(Self.connectFailurePrefix)\(target): \(error)")
        }
    }

    private func exchange<T: Sendable>(_ method: HTTPMethod, _ path: String, body: Data?,
                                       on channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>, to target: HostPort,
                                       read: (NIOAsyncChannelInboundStream<HTTPClientResponsePart>) async throws -> T) async throws -> T {
        try await channel.executeThenClose { inbound, outbound in
            var headers: HTTPHeaders = ["host": hostHeader ?? target.description, "connection": "close"]
            if let body {
                headers.add(name: "content-type", value: "application/json")
                headers.add(name: "content-length", value: "\(body.count)")
            }
            if let bearerToken { headers.add(name: "authorization", value: "Bearer \(bearerToken)") }
            for (name, value) in extraHeaders { headers.add(name: name, value: value) }
            var parts: [HTTPClientRequestPart] = [.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers))]
            if let body { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
            // The request goes out in one write: written part by part, a server that answers
            // at the head and closes (as `connection: close` asks) could close the channel
            // before the end was written, and the answer already read would be lost to an
            // "I/O on closed channel". A server may also answer before reading a request at
            // all (an early 4xx, or a close): what it said is still read.
            var sendFailure: Error?
            do {
                try await outbound.write(contentsOf: parts)
            } catch {
                sendFailure = error
            }
            do {
                return try await read(inbound)
            } catch {
                if let sendFailure {
                    throw MeshError(.unavailable, "\(target) closed the connection before the request was sent (\(sendFailure)); "
                                    + "check that it speaks HTTP/1.1\(tls == nil ? " without TLS" : " over mesh TLS") on that port")
                }
                if error is MeshError { throw error }
                throw MeshError(.unavailable, "connection to \(target) failed: \(error)")
            }
        }
    }
}

/// Which of several addresses of one service (control plane replicas) to call first: the one
/// that last worked. Shared by every client of a proxy, so that once one call finds a replica
/// dead, the others go straight to the next.
public final class TargetPreference: @unchecked Sendable {
    private let lock = NSLock()
    private var preferred: HostPort?
    /// Called when calls move from one address to another (for a log line).
    private let onSwitch: @Sendable (_ from: HostPort, _ to: HostPort) -> Void

    public init(onSwitch: @escaping @Sendable (_ from: HostPort, _ to: HostPort) -> Void = { _, _ in }) {
        self.onSwitch = onSwitch
    }

    public var current: HostPort? { lock.withLock { preferred } }

    func succeeded(_ target: HostPort) {
        lock.withLock { preferred = target }
    }

    func failed(_ target: HostPort, next: HostPort) {
        let moved: Bool = lock.withLock {
            guard preferred == nil || preferred == target else { return false }
            preferred = next
            return true
        }
        if moved { onSwitch(target, next) }
    }
}

/// Runs `work`, failing with `unavailable` when it takes longer than `limit`.
public func withTimeout<T: Sendable>(_ limit: Duration, _ work: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await work() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw MeshError(.unavailable, "no answer within \(limit)")
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        return first
    }
}
