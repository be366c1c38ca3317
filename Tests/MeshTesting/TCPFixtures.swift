import Foundation
import MeshCore
import NIOCore
import NIOPosix

/// A raw TCP app for opaque-stream tests: optionally speaks first (a banner, as SMTP or MySQL
/// servers do), then echoes every byte back.
public final class EchoServer: Sendable {
    private let channel: Channel
    public var address: HostPort { HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0) }

    public static func start(banner: String? = nil) async throws -> EchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EchoHandler(banner: banner))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return EchoServer(channel: channel)
    }

    private init(channel: Channel) { self.channel = channel }

    public func stop() async { try? await channel.close() }
}

private final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let banner: String?
    init(banner: String?) { self.banner = banner }

    func channelActive(context: ChannelHandlerContext) {
        if let banner { context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: banner)), promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

/// A raw TCP app that reads until its client shuts down its sending side, then answers
/// `received N bytes` and closes: the pattern of request-then-FIN protocols (and of
/// `nc -N`, `curl telnet://`), which works only if a half-close is carried through.
public final class HalfCloseServer: Sendable {
    private let channel: Channel
    public var address: HostPort { HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0) }

    public static func start() async throws -> HalfCloseServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(CountingHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return HalfCloseServer(channel: channel)
    }

    private init(channel: Channel) { self.channel = channel }

    public func stop() async { try? await channel.close() }

    private final class CountingHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var count = 0

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            count += unwrapInboundIn(data).readableBytes
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case ChannelEvent.inputClosed = event else { return context.fireUserInboundEventTriggered(event) }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "received \(count) bytes\n"))).whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}

/// A blocking TCP client for tests: connect, send, read with a deadline.
public final class RawTCPClient: @unchecked Sendable {
    private let fd: Int32

    public init(_ target: HostPort) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(target.host == "localhost" ? "127.0.0.1" : target.host)
        address.sin_port = UInt16(target.port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else {
            close(fd)
            throw TestFailure("cannot connect to \(target): errno \(errno)")
        }
    }

    deinit { close(fd) }

    /// Shuts the sending side (a FIN); reading goes on.
    public func shutdownWrite() {
        shutdown(fd, Int32(SHUT_WR))
    }

    public func send(_ text: String) throws {
        try send(bytes: Array(text.utf8))
    }

    public func send(bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw TestFailure("write failed: errno \(errno)") }
            sent += n
        }
    }

    /// Reads until `count` bytes arrived, the peer closed, or `timeout` passed; returns what
    /// was read (possibly less).
    public func receive(count: Int, timeout: Duration) -> String {
        String(decoding: receiveBytes(count: count, timeout: timeout), as: UTF8.self)
    }

    /// Reads until `count` bytes, a close or `timeout`, as bytes.
    public func receiveBytes(count: Int, timeout: Duration) -> [UInt8] {
        var received: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 65536)
        while received.count < count {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let millis = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            guard poll(&poller, 1, millis) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            received += buffer[0..<n]
        }
        return received
    }

    /// Reads up to the end of an HTTP response head (`\r\n\r\n`) and returns it; bytes after it
    /// stay unread in the socket only if they arrive later (a test reads them with `receive`).
    public func receiveHead(timeout: Duration) -> (head: String, rest: [UInt8]) {
        var received: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        let end: [UInt8] = [13, 10, 13, 10]
        while ContinuousClock.now < deadline {
            if let range = received.firstRange(of: end) {
                return (String(decoding: received[..<range.upperBound], as: UTF8.self), Array(received[range.upperBound...]))
            }
            let more = receiveBytes(count: 1, timeout: .milliseconds(200))
            received += more
        }
        return (String(decoding: received, as: UTF8.self), [])
    }

    /// Whether the peer closed the connection within `timeout` (reads and drops any bytes).
    public func closedByPeer(within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 50) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return true }
        }
        return false
    }
}
