import Foundation
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An app whose bodies are too long, or too slow, to be held whole by a proxy:
///
/// - `GET /events`: a chunked event stream. The first event goes out at once; the second and
///   the end only when the test calls ``releaseEvents()``. A caller sees the first event
///   before the second exists only if every proxy on the way passes each chunk on as it comes.
/// - `GET /bulk?bytes=N`: N bytes (`content-length`), written in one go.
/// - `POST /upload`: stops reading for ``uploadStall`` once the head is in, then reads the
///   body to its end and answers `received N`. What the caller sends meanwhile piles up
///   somewhere: in the proxies, unless they stop reading their caller.
public final class BulkApp: Sendable {
    private let channel: Channel
    private let waiting: NIOLockedValueBox<[NIOLoopBound<ChannelHandlerContext>]>
    public static let uploadStall: TimeAmount = .seconds(2)
    public var address: HostPort { HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0) }

    public static func start() async throws -> BulkApp {
        let waiting = NIOLockedValueBox<[NIOLoopBound<ChannelHandlerContext>]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(BulkHandler(waiting: waiting))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return BulkApp(channel: channel, waiting: waiting)
    }

    private init(channel: Channel, waiting: NIOLockedValueBox<[NIOLoopBound<ChannelHandlerContext>]>) {
        self.channel = channel
        self.waiting = waiting
    }

    /// Sends the second event and ends every `/events` stream open now.
    public func releaseEvents() {
        for bound in waiting.withLockedValue({ list in defer { list = [] }; return list }) {
            bound.eventLoop.execute {
                let context = bound.value
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "data: second\n\n")))), promise: nil)
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
            }
        }
    }

    public func stop() async { try? await channel.close() }
}

private final class BulkHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let waiting: NIOLockedValueBox<[NIOLoopBound<ChannelHandlerContext>]>
    private var uri = ""
    private var received = 0

    init(waiting: NIOLockedValueBox<[NIOLoopBound<ChannelHandlerContext>]>) { self.waiting = waiting }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            uri = head.uri
            received = 0
            if uri == "/upload" {
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
                let channel = context.channel
                context.eventLoop.scheduleTask(in: BulkApp.uploadStall) {
                    channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
                    channel.read()
                }
            }
        case .body(let chunk):
            received += chunk.readableBytes
        case .end:
            respond(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext) {
        if uri == "/events" {
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok,
                                                                 headers: ["content-type": "text/event-stream",
                                                                           "transfer-encoding": "chunked"]))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "data: first\n\n")))), promise: nil)
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            waiting.withLockedValue { $0.append(bound) }
            return
        }
        let body: ByteBuffer
        if uri.hasPrefix("/bulk?bytes="), let count = Int(uri.dropFirst("/bulk?bytes=".count)) {
            body = ByteBuffer(repeating: UInt8(ascii: "b"), count: count)
        } else {
            body = ByteBuffer(string: "received \(received)")
        }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok,
                                                             headers: ["content-length": "\(body.readableBytes)"]))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
