import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import XCTest
import NIOCore
import NIOHTTP1
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// A proxy that answers before the request has fully arrived (a denial, a local error) and
/// was asked to close (`Connection: close`) reads the request to its end first: closing
/// while the client still sends loses the answer for clients that read only after sending
/// everything (NIO-based ones fail their late writes on the closed channel).
final class EarlyAnswerTests: XCTestCase {
    func testADeniedRequestWhoseBodyComesLateStillGetsItsAnswer() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) { ((try? await mesh.services()) ?? []).count == 2 }
            try await Task.sleep(for: .milliseconds(300))
            let body = Array("{\"order\": 12345}".utf8)
            let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/orders",
                                       headers: ["host": "api", "content-length": "\(body.count)", "connection": "close"])
            let status = try await LateBodyClient.exchange(web.outbound, head: head, body: body, pause: .milliseconds(300))
            XCTAssertEqual(status, .forbidden)
            XCTAssertTrue(app.requests.isEmpty)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// An HTTP/2 app that answers before it has read the request's body and then stops the
    /// upload with RST_STREAM(NO_ERROR) (nginx, for every answer to a POST it does not read):
    /// a thousand such requests, ten at a time on one connection, are all answered. The
    /// proxy's connection to the app once took those resets for a reset flood after 200 of
    /// them (swift-nio-http2's server-side defence), sent GOAWAY and kept the connection: the
    /// requests after that waited for the app's idle timeout (75 s).
    ///
    /// Then uploads larger than a stream's window (256 KiB): the caller's proxy is still
    /// sending when the answer comes, so it resets its stream to the app's proxy, once per
    /// request; that connection once went the same way (the streams on it failed), and nginx
    /// ends its connection with GOAWAY every few hundred such uploads, which a new stream must
    /// not meet (it goes to a new connection).
    func testAnHTTP2AppThatResetsAfterEachEarlyAnswerIsServedWithoutEnd() async throws {
        let h2load = "/usr/bin/h2load"
        try requireTool(FileManager.default.isExecutableFile(atPath: h2load), "h2load (apt-get install nghttp2-client)")
        try await withNginxBehindTheMesh { mesh, web in
            _ = try await eventually {
                let first = try runCapturingOutput("/usr/bin/curl", ["-sS", "--http2-prior-knowledge", "--max-time", "5",
                                                                     "-H", "Host: api", "http://\(web.outbound)/"], timeout: 10)
                guard first.out.contains("hello from nginx") else { throw TestFailure("not through yet: \(first.out) \(first.err)") }
            }
            // `count` POSTs of `size` bytes, ten at a time on one connection: h2load's summary
            // line ("requests: … succeeded …") and its output.
            func post(_ count: Int, of size: Int, timeout: TimeInterval) async throws -> (summary: Substring, out: String) {
                let body = mesh.directory.appendingPathComponent("upload-\(size).bin")
                try Data(repeating: 0x61, count: size).write(to: body)
                let run = try await Task.detached {
                    try runCapturingOutput(h2load, ["-t1", "-c1", "-m10", "-n", "\(count)", "-d", body.path, "-H", ":authority: api",
                                                   "http://\(web.outbound)/upload"], timeout: timeout)
                }.value
                return (run.out.split(separator: "\n").first { $0.hasPrefix("requests:") } ?? "", run.out)
            }
            let small = try await post(1000, of: 100, timeout: 30)
            print("POSTs answered early and reset by nginx: \(small.summary)")
            XCTAssertTrue(small.summary.contains(" 1000 succeeded"), "every request is answered: \(small.out.suffix(1500))")

            let large = try await post(400, of: 256 * 1024, timeout: 60)
            print("256 KiB uploads answered early: \(large.summary)")
            XCTAssertTrue(large.summary.contains(" 400 succeeded"), "every upload is answered: \(large.out.suffix(1500))")
        }
    }

    /// An app's gRPC client resets a stream for every call it gives up on (a deadline, a
    /// cancellation). 600 requests, each reset as soon as it is sent, on one h2c connection to
    /// the app's outbound listener: the connection stays, and the next request on it is
    /// answered. swift-nio-http2's default for servers (200 resets in 30 s) had the sidecar
    /// end the app's connection at the 201st, failing the calls on it.
    func testAnAppWhoseClientCancelsManyCallsKeepsItsConnection() async throws {
        try await withNginxBehindTheMesh { _, web in
            let client = try await H2CClient.connect(web.outbound)
            defer { client.close() }
            _ = try await eventually {
                let status = try await client.request(authority: "api", path: "/")
                guard status == "200" else { throw TestFailure("not through yet: \(status)") }
            }
            for _ in 0..<600 { try await client.requestThenReset(authority: "api", path: "/") }
            let status = try await client.request(authority: "api", path: "/")
            XCTAssertEqual(status, "200", "the connection that carried 600 cancelled calls still serves")
        }
    }

    /// Service `api` on nginx (h2c) behind its sidecar, and a `web` sidecar whose outbound
    /// listener `body` calls, once `api` is registered. One event loop each: every request to
    /// the app shares one HTTP/2 connection. A failure prints the mesh's logs.
    private func withNginxBehindTheMesh(_ body: (TestMesh, TestMesh.Proxy) async throws -> Void) async throws {
        try requireTool(NginxApp.binary != nil, "nginx (apt-get install nginx)")
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await NginxApp.start()
        do {
            _ = try await mesh.proxy("api", app: app.address, extra: ["--threads", "1"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--threads", "1"])
            try await waitUntil { ((try? await mesh.services()) ?? []).contains { $0.service.rawValue == "api" } }
            try await body(mesh, web)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        app.stop()
        await mesh.shutdown()
    }

    /// The mesh's own client (control plane calls, the CLI, an admin port) gets the answer of
    /// a server that answers and closes at once, as the sidecars do for `Connection: close`:
    /// it once wrote a GET's head and its end in two writes, and an answer that came and
    /// closed the channel between them was lost to "I/O on closed channel" (1 call in 33,739
    /// of StaticStabilityTests' load on CI). Also when the server answers before it has read
    /// anything. 300 calls each way; a server that closes without a word is a clear error.
    func testTheMeshClientReadsTheAnswerOfAServerThatClosesAsItAnswers() async throws {
        let server = try await QuickCloser.start(answerAt: .firstRead)
        let client = APIClient(target: server.address, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
        // Eight callers at once: the race needs a caller's task to wait between its writes.
        let failures = await withTaskGroup(of: [String].self) { group in
            for caller in 0..<8 {
                group.addTask {
                    var failures: [String] = []
                    for call in 0..<250 {
                        do {
                            let response = try await client.get("/ready")
                            if response.status != .ok || response.text != "ok" {
                                failures.append("caller \(caller), call \(call): \(response.status) \(response.text)")
                            }
                        } catch {
                            failures.append("caller \(caller), call \(call): \(error)")
                        }
                    }
                    return failures
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
        XCTAssertEqual(failures, [], "\(failures.count) of 2000 calls failed")
        try await server.channel.close()
        // A server that closes without a word: every call fails with an error that names it,
        // whichever write or read meets the close.
        let silent = try await QuickCloser.start(answerAt: nil)
        for call in 0..<200 {
            do {
                _ = try await APIClient(target: silent.address, group: MultiThreadedEventLoopGroup.singleton, tls: nil).get("/ready")
                XCTFail("call \(call): a server that closes without answering is an error")
            } catch let error as MeshError {
                XCTAssertEqual(error.code, .unavailable)
                XCTAssertTrue(error.message.contains(silent.address.description), error.message)
            } catch {
                XCTFail("call \(call): not a MeshError naming the server: \(error)")
                break
            }
        }
        try await silent.channel.close()
    }
}

/// A plain TCP server that writes one fixed HTTP/1.1 answer (`200`, body `ok`) and closes,
/// at accept or at the first bytes it reads; with no moment, it closes at accept unanswered.
private enum QuickCloser {
    enum Moment: Sendable { case accept, firstRead }

    static func start(answerAt: Moment?) async throws -> (channel: Channel, address: HostPort) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(answerAt: answerAt)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, HostPort(host: "127.0.0.1", port: channel.localAddress?.port ?? 0))
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let answerAt: Moment?
        var answered = false
        init(answerAt: Moment?) { self.answerAt = answerAt }

        func channelActive(context: ChannelHandlerContext) {
            switch answerAt {
            case .accept: answer(context)
            case nil: context.close(promise: nil)
            case .firstRead: break
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if answerAt == .firstRead { answer(context) }
        }

        private func answer(_ context: ChannelHandlerContext) {
            guard !answered else { return }
            answered = true
            let text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            context.writeAndFlush(NIOAny(ByteBuffer(string: text))).whenComplete { _ in context.close(promise: nil) }
        }
    }
}

/// An HTTP client on NIO (as the mesh's own and many others are) that sends the head, then
/// the rest after a pause, and reads the answer after that: if the server closes meanwhile,
/// NIO closes the channel and the late writes fail before any answer is read.
enum LateBodyClient {
    static func exchange(_ target: HostPort, head: HTTPRequestHead, body: [UInt8], pause: Duration) async throws -> HTTPResponseStatus? {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.head(head))
            try await Task.sleep(for: pause)
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
            try await outbound.write(.end(nil))
            for try await part in inbound {
                if case .head(let response) = part { return response.status }
            }
            return nil
        }
    }
}

/// A bare HTTP/2 client over h2c (prior knowledge) on swift-nio-http2: one connection, a
/// stream per request, and requests it resets as soon as they are sent (RST_STREAM CANCEL,
/// what a gRPC client sends for a call it gives up on).
private final class H2CClient: @unchecked Sendable {
    private let channel: Channel
    private let multiplexer: NIOHTTP2Handler.StreamMultiplexer

    private init(channel: Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer) {
        self.channel = channel
        self.multiplexer = multiplexer
    }

    static func connect(_ target: HostPort) async throws -> H2CClient {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: target.host, port: target.port).get()
        let multiplexer = try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(),
                                                                       streamConfiguration: .init()) { $0.eventLoop.makeSucceededVoidFuture() }
        }.get()
        return H2CClient(channel: channel, multiplexer: multiplexer)
    }

    /// A GET; the answer's `:status`, or "closed" when the stream or connection ends first.
    func request(authority: String, path: String) async throws -> String {
        let answer = channel.eventLoop.makePromise(of: String.self)
        let stream = try await open(answer)
        try await stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: Self.head(authority, path), endStream: true)))
        return try await answer.futureResult.get()
    }

    /// A GET whose stream is closed in the same event-loop tick as its request is written:
    /// its answer cannot have come, so the close resets it.
    func requestThenReset(authority: String, path: String) async throws {
        let stream = try await open(channel.eventLoop.makePromise(of: String.self))
        try await stream.eventLoop.submit {
            stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: Self.head(authority, path), endStream: true)), promise: nil)
            stream.close(promise: nil)
        }.get()
    }

    func close() { channel.close(promise: nil) }

    private func open(_ answer: EventLoopPromise<String>) async throws -> Channel {
        let promise = channel.eventLoop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: promise) { stream in
            stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(StatusReader(answer)) }
        }
        // No stream (the connection is gone): nobody will answer.
        promise.futureResult.whenFailure { answer.fail($0) }
        return try await promise.futureResult.get()
    }

    private static func head(_ authority: String, _ path: String) -> HPACKHeaders {
        [":method": "GET", ":scheme": "http", ":authority": authority, ":path": path]
    }

    /// Keeps the first `:status` of a stream's answer.
    private final class StatusReader: ChannelInboundHandler {
        typealias InboundIn = HTTP2Frame.FramePayload
        private let answer: EventLoopPromise<String>
        init(_ answer: EventLoopPromise<String>) { self.answer = answer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .headers(let headers) = unwrapInboundIn(data), let status = headers.headers.first(name: ":status") {
                answer.succeed(status)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            answer.succeed("closed")
            context.fireChannelInactive()
        }
    }
}
