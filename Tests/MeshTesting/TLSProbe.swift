import Foundation
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Connects to a listener the way a hostile or broken client would and reports what came
/// back: an HTTP response, or a closed connection without one.
public enum TLSProbe {
    public enum Outcome: Equatable, CustomStringConvertible {
        case httpResponse(String)
        case closedWithoutResponse
        public var description: String {
            switch self {
            case .httpResponse(let text): return "HTTP response: \(text.prefix(80))"
            case .closedWithoutResponse: return "closed without a response"
            }
        }
    }

    /// A TLS client presenting `chainPEM`/`keyPEM` (or nothing), limited to `maxVersion`.
    public static func tls(_ target: HostPort, chainPEM: String?, keyPEM: String?,
                           maxVersion: TLSVersion = .tlsv13, minVersion: TLSVersion = .tlsv12) async throws -> Outcome {
        var config = TLSConfiguration.makeClientConfiguration()
        config.certificateVerification = .none
        config.minimumTLSVersion = minVersion
        config.maximumTLSVersion = maxVersion
        if let chainPEM, let keyPEM {
            config.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(chainPEM.utf8)).map { .certificate($0) }
            config.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        }
        let context = try NIOSSLContext(configuration: config)
        return try await exchange(target) { channel in
            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
        }
    }

    /// Plain TCP: sends an HTTP request without TLS.
    public static func plaintext(_ target: HostPort) async throws -> Outcome {
        try await exchange(target) { _ in }
    }

    private static func exchange(_ target: HostPort, setup: @escaping @Sendable (Channel) throws -> Void) async throws -> Outcome {
        let received = NIOLockedValueBox(ByteBuffer())
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try setup(channel)
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                }
            }
            .connect(host: target.host, port: target.port).get()
        let request = "GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        channel.writeAndFlush(ByteBuffer(string: request), promise: nil)
        // Wait for the server to close (or 5 s at most).
        let deadline = ContinuousClock.now + .seconds(5)
        while channel.isActive && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        try? await channel.close()
        let text = received.withLockedValue { String(buffer: $0) }
        return text.hasPrefix("HTTP/") ? .httpResponse(text) : .closedWithoutResponse
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<ByteBuffer>
        init(received: NIOLockedValueBox<ByteBuffer>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received.withLockedValue { $0.writeBuffer(&buffer) }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }
}
