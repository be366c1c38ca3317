import Foundation
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// An HTTP/1.1 app that answers each request with the bytes its script gives for the path,
/// exactly as written: for tests of how a proxy passes on what upstreams really send
/// (close-delimited bodies, chunked bodies with trailers, interim answers, broken framing).
/// Paths not in the script get `200 ok`. Request bodies with a `Content-Length` are skipped.
public final class ScriptedHTTPApp: Sendable {
    public struct Answer: Sendable {
        public var bytes: String
        /// Close the connection once the answer is written (a close-delimited body).
        public var closeAfter: Bool
        /// Send the head first and the rest (the body) this long after it, in another write.
        public var bodyDelay: TimeAmount?

        public init(_ bytes: String, closeAfter: Bool = false, bodyDelay: TimeAmount? = nil) {
            self.bytes = bytes
            self.closeAfter = closeAfter
            self.bodyDelay = bodyDelay
        }
    }

    private let channel: Channel
    private let seen: NIOLockedValueBox<[String]>
    private let receivedBodies: NIOLockedValueBox<[String]>
    public var address: HostPort { HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0) }
    /// The request lines received, in order (`GET /path`).
    public var requests: [String] { seen.withLockedValue { $0 } }
    /// The bodies received (`Content-Length` framed), in order; requests without one add none.
    public var bodies: [String] { receivedBodies.withLockedValue { $0 } }

    public static func start(_ script: [String: Answer]) async throws -> ScriptedHTTPApp {
        let seen = NIOLockedValueBox<[String]>([])
        let bodies = NIOLockedValueBox<[String]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ScriptedHandler(script: script, seen: seen, bodies: bodies))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return ScriptedHTTPApp(channel: channel, seen: seen, bodies: bodies)
    }

    private init(channel: Channel, seen: NIOLockedValueBox<[String]>, bodies: NIOLockedValueBox<[String]>) {
        self.channel = channel
        self.seen = seen
        self.receivedBodies = bodies
    }

    public func stop() async { try? await channel.close() }
}

private final class ScriptedHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let script: [String: ScriptedHTTPApp.Answer]
    let seen: NIOLockedValueBox<[String]>
    let bodies: NIOLockedValueBox<[String]>
    var buffer = ByteBuffer()
    var skipBody = 0

    init(script: [String: ScriptedHTTPApp.Answer], seen: NIOLockedValueBox<[String]>, bodies: NIOLockedValueBox<[String]>) {
        self.script = script
        self.seen = seen
        self.bodies = bodies
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        while true {
            if skipBody > 0 {
                let skip = min(skipBody, buffer.readableBytes)
                let piece = buffer.readString(length: skip) ?? ""
                bodies.withLockedValue { $0[$0.count - 1] += piece }
                skipBody -= skip
                if skipBody > 0 { return }
            }
            let text = String(buffer: buffer)
            guard let end = text.range(of: "\r\n\r\n") else { return }
            let head = String(text[..<end.lowerBound])
            buffer.moveReaderIndex(forwardBy: text[..<end.upperBound].utf8.count)
            let lines = head.components(separatedBy: "\r\n")
            let requestLine = lines.first ?? ""
            let parts = requestLine.split(separator: " ")
            let path = parts.count > 1 ? String(parts[1]) : "/"
            seen.withLockedValue { $0.append("\(parts.first ?? "") \(path)") }
            for line in lines.dropFirst() where line.lowercased().hasPrefix("content-length:") {
                skipBody = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
            }
            if skipBody > 0 { bodies.withLockedValue { $0.append("") } }
            let answer = script[path] ?? .init("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if let delay = answer.bodyDelay, let split = answer.bytes.range(of: "\r\n\r\n") {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: String(answer.bytes[..<split.upperBound]))), promise: nil)
                let body = ByteBuffer(string: String(answer.bytes[split.upperBound...]))
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: delay) {
                    bound.value.writeAndFlush(NIOAny(body), promise: nil)
                }
                continue
            }
            context.write(wrapOutboundOut(ByteBuffer(string: answer.bytes)), promise: nil)
            if answer.closeAfter {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in context.close(promise: nil) }
                return
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}
