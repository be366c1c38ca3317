import MeshTransport
import NIOCore
import NIOPosix
import XCTest

/// The HTTP/2 connections' flush coalescer: the flushes of one event-loop tick reach the
/// socket as one, and no written byte waits for a flush that never comes. Over a real loopback
/// TCP connection.
final class FlushCoalescerTests: XCTestCase {
    /// Counts the flushes that get past the coalescer (on their way to the socket).
    private final class FlushCounter: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var flushes = 0
        func flush(context: ChannelHandlerContext) {
            flushes += 1
            context.flush()
        }
    }

    /// Collects what the server side of the connection receives.
    private final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        private var received = ""
        private var waiting: (count: Int, promise: EventLoopPromise<String>)?

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            check()
        }

        /// Succeeds once `count` bytes in all have arrived.
        func wait(for count: Int, on loop: EventLoop) -> EventLoopFuture<String> {
            loop.submit {
                let promise = loop.makePromise(of: String.self)
                self.waiting = (count, promise)
                self.check()
                return promise.futureResult
            }.flatMap { $0 }
        }

        private func check() {
            guard let waiting, received.utf8.count >= waiting.count else { return }
            self.waiting = nil
            waiting.promise.succeed(received)
        }
    }

    func testFlushesOfOneTickGoOutAsOneAndEveryByteArrivesInOrder() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let collector = Collector()
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? server.close().wait() }
        let counter = FlushCounter()
        let client = try ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(counter)
                    try channel.pipeline.syncOperations.addHandler(FlushCoalescer())
                }
            }
            .connect(to: try XCTUnwrap(server.localAddress)).wait()
        defer { try? client.close().wait() }

        // Ten streams' worth of writes, each flushed, in one tick of the loop.
        try client.eventLoop.submit {
            for letter in "abcdefghij" { client.writeAndFlush(ByteBuffer(string: String(letter)), promise: nil) }
            XCTAssertEqual(counter.flushes, 0, "no flush goes out before the tick ends")
        }.wait()
        XCTAssertEqual(try collector.wait(for: 10, on: client.eventLoop).wait(), "abcdefghij")
        XCTAssertEqual(try client.eventLoop.submit { counter.flushes }.wait(), 1, "ten flushes in one tick are one")

        // A later tick flushes again: nothing is held back waiting for more.
        try client.writeAndFlush(ByteBuffer(string: "k")).wait()
        XCTAssertEqual(try collector.wait(for: 11, on: client.eventLoop).wait(), "abcdefghijk")
        XCTAssertEqual(try client.eventLoop.submit { counter.flushes }.wait(), 2)
    }
}
