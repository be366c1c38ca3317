import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import XCTest
import NIOCore
import NIOHTTP1
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
