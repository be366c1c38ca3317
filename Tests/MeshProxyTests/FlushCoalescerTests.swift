import MeshTransport
import NIOCore
import NIOPosix
import XCTest

/// The HTTP/2 connections' flush coalescer: the flushes of one event-loop tick reach the
/// socket as one, and no written byte waits for a flush that never comes. Over a real loopback
/// TCP connection.
final class FlushCoalescerTests: XCTestCase {
    /// Counts the flushes and the writes (with their sizes) that get past the coalescer (on
    /// their way to the socket, where TLS would make a record of each write).
    private final class FlushCounter: ChannelOutboundHandler {
        typealias OutboundIn = IOData
        var flushes = 0
        var writes: [Int] = []
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            if case .byteBuffer(let buffer) = unwrapOutboundIn(data) { writes.append(buffer.readableBytes) }
            context.write(data, promise: promise)
        }
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

    /// A loopback connection whose client writes through `coalescer`, a ``FlushCounter``
    /// under it, to a ``Collector``.
    private struct Pair {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let collector = Collector()
        let counter = FlushCounter()
        let server: Channel
        let client: Channel

        init(_ coalescer: FlushCoalescer) throws {
            let (collector, counter) = (self.collector, self.counter)
            server = try ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
                }
                .bind(host: "127.0.0.1", port: 0).wait()
            client = try ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(counter)
                        try channel.pipeline.syncOperations.addHandler(coalescer)
                    }
                }
                .connect(to: try XCTUnwrap(server.localAddress)).wait()
        }

        func close() {
            try? client.close().wait()
            try? server.close().wait()
            try? group.syncShutdownGracefully()
        }
    }

    func testFlushesOfOneTickGoOutAsOneAndEveryByteArrivesInOrder() throws {
        let pair = try Pair(FlushCoalescer())
        defer { pair.close() }
        let (client, counter, collector) = (pair.client, pair.counter, pair.collector)

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

    func testSmallWritesOfAFlushGoOutAsOneBufferInOrderAndEveryPromiseIsKept() throws {
        let pair = try Pair(FlushCoalescer())
        defer { pair.close() }
        let (client, counter, collector) = (pair.client, pair.counter, pair.collector)

        // A frame header and its payload, ten times (as HTTP/2 writes DATA frames): one buffer.
        var expected = ""
        let written = try client.eventLoop.submit { () -> [EventLoopFuture<Void>] in
            var futures: [EventLoopFuture<Void>] = []
            for index in 0..<10 {
                futures.append(client.write(ByteBuffer(string: "<\(index)>")))
                client.write(ByteBuffer(string: "payload \(index);"), promise: nil)
                expected += "<\(index)>payload \(index);"
            }
            client.flush()
            return futures
        }.wait()
        XCTAssertEqual(try collector.wait(for: expected.utf8.count, on: client.eventLoop).wait(), expected)
        for future in written { XCTAssertNoThrow(try future.wait(), "each write's promise succeeds with its buffer") }
        XCTAssertEqual(try client.eventLoop.submit { counter.writes }.wait(), [expected.utf8.count], "twenty writes, one buffer")

        // A write over the piece limit goes on alone, in its place; a buffer is never over one
        // TLS record: five 4 KB writes are a 16 KB buffer and a 4 KB one.
        let large = String(repeating: "L", count: FlushCoalescer.maxPieceBytes + 1)
        let piece = String(repeating: "p", count: FlushCoalescer.maxPieceBytes)
        try client.eventLoop.submit {
            counter.writes = []
            client.write(ByteBuffer(string: "a"), promise: nil)
            client.write(ByteBuffer(string: "b"), promise: nil)
            client.write(ByteBuffer(string: large), promise: nil)
            client.write(ByteBuffer(string: "c"), promise: nil)
            client.flush()
        }.wait()
        expected += "ab" + large + "c"
        XCTAssertEqual(try collector.wait(for: expected.utf8.count, on: client.eventLoop).wait(), expected)
        try client.eventLoop.submit {
            XCTAssertEqual(counter.writes, [2, large.utf8.count, 1])
            counter.writes = []
            for _ in 0..<5 { client.write(ByteBuffer(string: piece), promise: nil) }
            client.flush()
        }.wait()
        expected += String(repeating: piece, count: 5)
        XCTAssertEqual(try collector.wait(for: expected.utf8.count, on: client.eventLoop).wait(), expected)
        XCTAssertEqual(try client.eventLoop.submit { counter.writes }.wait(), [FlushCoalescer.maxMergedBytes, piece.utf8.count])

        // Written and closed before the flush: the write's promise is completed, not dropped.
        let last = try client.eventLoop.submit { () -> EventLoopFuture<Void> in
            let future = client.write(ByteBuffer(string: "unflushed"))
            client.close(promise: nil)
            return future
        }.wait()
        XCTAssertThrowsError(try last.wait(), "a write never flushed fails when the channel closes")
    }

    /// Under an HTTP/1.1 codec: the flush goes on at once, with the message's parts in one buffer.
    func testWithoutDeferringAFlushGoesOnAtOnceWithItsWritesInOneBuffer() throws {
        let pair = try Pair(FlushCoalescer(deferringFlushes: false))
        defer { pair.close() }
        let (client, counter, collector) = (pair.client, pair.counter, pair.collector)

        let message = ["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", "hel", "lo"]
        try client.eventLoop.submit {
            for part in message { client.write(ByteBuffer(string: part), promise: nil) }
            client.flush()
            XCTAssertEqual(counter.flushes, 1, "the flush is not held to the end of the tick")
            XCTAssertEqual(counter.writes, [message.joined().utf8.count], "head and body in one buffer")
        }.wait()
        XCTAssertEqual(try collector.wait(for: message.joined().utf8.count, on: client.eventLoop).wait(), message.joined())
    }
}
