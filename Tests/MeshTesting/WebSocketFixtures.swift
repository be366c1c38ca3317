import Foundation
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A WebSocket echo server (SwiftNIO's WebSocket upgrader): answers every text frame with
/// `echo: TEXT`, and greets each new connection with a `hello` frame right after the 101 (so
/// the frame rides in the same read as the handshake answer).
public final class WebSocketEchoServer: Sendable {
    private let channel: Channel
    private let rogueCount: NIOLockedValueBox<Int>
    public var address: HostPort { HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0) }
    /// How many `/rogue-101` requests reached the server.
    public var rogueRequests: Int { rogueCount.withLockedValue { $0 } }

    public static func start() async throws -> WebSocketEchoServer {
        let rogueCount = NIOLockedValueBox(0)
        let upgrader = NIOWebSocketServerUpgrader(
            shouldUpgrade: { channel, head in
                // `/refuse` is refused: the handshake is answered with a plain 403.
                channel.eventLoop.makeSucceededFuture(head.uri == "/refuse" ? nil : HTTPHeaders())
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    // The plain-HTTP handler has no business with frames.
                    if let plain = try? sync.handler(type: RefuseHandler.self) { sync.removeHandler(plain, promise: nil) }
                    try sync.addHandler(EchoFrames())
                }
            })
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try channel.pipeline.syncOperations.addHandler(RefuseHandler(rogueCount: rogueCount))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return WebSocketEchoServer(channel: channel, rogueCount: rogueCount)
    }

    private init(channel: Channel, rogueCount: NIOLockedValueBox<Int>) {
        self.channel = channel
        self.rogueCount = rogueCount
    }
    public func stop() async { try? await channel.close() }
}

/// Plain HTTP answers of the echo server (requests that did not upgrade): 403 (on `/bye` with
/// `Connection: close`, and the connection closes), except on `/rogue-101`, answered with a
/// `101 Switching Protocols` to WebSocket that nobody asked for (a broken or hostile app).
private final class RefuseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private var rogue = false
    private var bye = false
    private let rogueCount: NIOLockedValueBox<Int>
    init(rogueCount: NIOLockedValueBox<Int>) { self.rogueCount = rogueCount }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            rogue = head.uri == "/rogue-101"
            if rogue { rogueCount.withLockedValue { $0 += 1 } }
            bye = head.uri == "/bye"
            return
        case .body: return
        case .end: break
        }
        if rogue {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols,
                                                                         headers: ["upgrade": "websocket", "connection": "upgrade"]))),
                                  promise: nil)
            return
        }
        let body = ByteBuffer(string: "no websocket here\n")
        var headers: HTTPHeaders = ["content-length": "\(body.readableBytes)"]
        if bye { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .forbidden, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let sent = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if bye { sent.whenComplete { _ in context.close(promise: nil) } }
    }
}

private final class EchoFrames: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    func handlerAdded(context: ChannelHandlerContext) {
        send("hello", context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            let data = frame.unmaskedData
            let text = data.getString(at: data.readerIndex, length: data.readableBytes) ?? ""
            send("echo: \(text)", context: context)
        case .connectionClose:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer())))
                .whenComplete { _ in context.close(promise: nil) }
        default:
            break
        }
    }

    private func send(_ text: String, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))), promise: nil)
    }
}

/// The client side of RFC 6455 by hand over a ``RawTCPClient``: the opening handshake and
/// masked text frames, so the test sees exactly the bytes that cross the mesh.
public enum WebSocketClient {
    /// The opening handshake request for `path` on `host`.
    public static func handshake(path: String, host: String) -> String {
        "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    }

    /// A masked text frame (clients must mask), payload under 126 bytes.
    public static func textFrame(_ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        return [0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    }

    /// An unmasked text frame as a server sends it, for comparing with what arrived.
    public static func serverTextFrame(_ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        return [0x81, UInt8(payload.count)] + payload
    }
}
