import Foundation
import MeshCore
import MeshTesting
import NIOCore
import NIOPosix
import XCTest

/// What a client relies on when it keeps a connection to its sidecar: pipelined requests
/// answered in order, and idle connections closed after the idle timeout.
final class ConnectionReuseTests: XCTestCase {
    func testPipelinedRequestsAreAnsweredInOrder() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // Four requests in one write. The first takes a second (the app's /slow), so the
            // others arrive while its exchange is open; the third is answered by the proxy
            // itself (no such service); the last closes the connection after its answer.
            let requests = "GET /slow-first HTTP/1.1\r\nHost: api\r\n\r\n"
                + "POST /second HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello"
                + "GET /third HTTP/1.1\r\nHost: nosuch\r\n\r\n"
                + "GET /fourth HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
            let answer = try await RawSocket.send(Array(requests.utf8), to: web.outbound)
            XCTAssertEqual(statusLines(answer), ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable", "HTTP/1.1 200 OK"],
                           answer)
            XCTAssertTrue(answer.contains("unknown service 'nosuch'"), answer)
            let paths = app.requests.map(\.path).filter { ["/slow-first", "/second", "/fourth"].contains($0) }
            XCTAssertEqual(paths, ["/slow-first", "/second", "/fourth"], "the app got the requests in order, once each")

            // A request the proxy cannot parse, pipelined behind one being answered: the
            // answer to the first goes out, then the 400, then the connection closes.
            let withGarbage = "GET /slow-before-garbage HTTP/1.1\r\nHost: api\r\n\r\n\u{0}\u{1}NOT HTTP\r\n\r\n"
            let answers = try await RawSocket.send(Array(withGarbage.utf8), to: web.outbound)
            XCTAssertEqual(statusLines(answers), ["HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"], answers)

            // A request with Connection: close ends the connection: what was pipelined behind
            // it never reaches the app.
            let closing = "GET /closing HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\nGET /after-close HTTP/1.1\r\nHost: api\r\n\r\n"
            let closed = try await RawSocket.send(Array(closing.utf8), to: web.outbound)
            XCTAssertEqual(statusLines(closed).count, 1, closed)
            try await Task.sleep(for: .milliseconds(200))
            XCTAssertFalse(app.requests.contains { $0.path == "/after-close" }, "a request behind Connection: close was sent on")

            // The connection still serves normal callers afterwards.
            let still = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(still.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testAClientThatPipelinesTooMuchIsClosedAndTheProxyServesOn() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // 200 requests behind a slow one, in one write: more than the 128 the proxy holds.
            let flood = "GET /slow-flood HTTP/1.1\r\nHost: api\r\n\r\n"
                + (0..<200).map { "GET /flood-\($0) HTTP/1.1\r\nHost: api\r\n\r\n" }.joined()
            let answer = try await RawSocket.send(Array(flood.utf8), to: web.outbound)
            let answered = statusLines(answer).count
            XCTAssertEqual(answered, 0, "the connection was not closed at the limit: \(answered) answers")
            try await Task.sleep(for: .milliseconds(1500))
            XCTAssertFalse(app.requests.contains { $0.path.hasPrefix("/flood-") }, "requests held beyond the limit were sent on")
            let still = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(still.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testIdleConnectionsAreClosedAfterTheIdleTimeout() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--idle-timeout", "1s"])
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // A keep-alive request, then nothing: the answer comes at once, the close after
            // the idle timeout.
            let started = ContinuousClock.now
            let answer = try await RawSocket.send(Array("GET /once HTTP/1.1\r\nHost: api\r\n\r\n".utf8), to: web.outbound)
            let elapsed = ContinuousClock.now - started
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200"), answer)
            XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(900), "closed before the idle timeout")
            XCTAssertLessThan(elapsed, .seconds(4), "the idle connection was not closed")

            // A connection kept busy is not cut: a request every 400 ms for 2.4 s, all on one
            // connection, all answered.
            let answers = try await KeepAliveCaller.call(web.outbound, paths: (0..<6).map { "/busy-\($0)" }, pause: .milliseconds(400))
            XCTAssertEqual(answers.count, 6)
            XCTAssertTrue(answers.allSatisfy { $0.hasPrefix("HTTP/1.1 200") }, "\(answers)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}

/// The status lines of the answers read from one connection, in order.
private func statusLines(_ answers: String) -> [String] {
    answers.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n")
        .filter { $0.hasPrefix("HTTP/1.1 ") }.map(String.init)
}

/// Sends requests one after another on one keep-alive connection, reading each answer
/// (head and Content-Length body) before the next.
enum KeepAliveCaller {
    static func call(_ target: HostPort, paths: [String], pause: Duration) async throws -> [String] {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var answers: [String] = []
            var iterator = inbound.makeAsyncIterator()
            var received = ByteBuffer()
            for path in paths {
                try await outbound.write(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: api\r\n\r\n"))
                while true {
                    let text = String(decoding: received.readableBytesView, as: UTF8.self)
                    if let end = text.range(of: "\r\n\r\n") {
                        let head = text[..<end.lowerBound]
                        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                        let total = text.utf8.distance(from: text.startIndex, to: end.upperBound) + length
                        if received.readableBytes >= total {
                            answers.append(String(decoding: received.readableBytesView.prefix(total), as: UTF8.self))
                            received.moveReaderIndex(forwardBy: total)
                            break
                        }
                    }
                    guard var chunk = try await iterator.next() else { return answers }
                    received.writeBuffer(&chunk)
                }
                try await Task.sleep(for: pause)
            }
            return answers
        }
    }
}
