import Foundation
import MeshCore
import MeshTesting
import XCTest

/// With `--peer-protocol h2`, HTTP/1.1 requests between proxies ride multiplexed HTTP/2
/// connections (as Linkerd does): the app on each side still speaks plain HTTP/1.1 (curl and
/// Python's http.server here), with chunked bodies in both directions, and many concurrent
/// requests share one connection between the proxies. The default keeps a pool of HTTP/1.1
/// connections.
final class PeerHTTP2Tests: XCTestCase {
    func testHTTP1RequestsShareOneHTTP2ConnectionBetweenProxies() async throws {
        let mesh = try await TestMesh.start()
        let backend = try await HTTP1Peer.start()
        do {
            _ = try await mesh.proxy("api", app: backend.address, extra: ["--threads", "1"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9),
                                           extra: ["--threads", "1", "--peer-protocol", "h2"])
            // The default: a pool of HTTP/1.1 connections.
            let legacy = try await mesh.proxy("legacy", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--threads", "1"])
            _ = try await eventually { () async throws -> Void in
                let answer = try curl(web.outbound, "/ready")
                guard answer.status == 200 else { throw TestFailure("not routed yet: \(answer.head)") }
            }

            // The app gets HTTP/1.1 with the caller's identity, and nothing of the HTTP/2 hop.
            let plain = try curl(web.outbound, "/info?x=1")
            XCTAssertEqual(plain.status, 200, plain.head)
            let seen = try JSONDecoder().decode(HTTP1Peer.Seen.self, from: Data(plain.body.utf8))
            XCTAssertEqual(seen.version, "HTTP/1.1")
            XCTAssertEqual(seen.path, "/info?x=1")
            XCTAssertEqual(seen.header("host"), ["api"])
            XCTAssertEqual(seen.header("x-mesh-peer-identity"), ["spiffe://mesh.local/ns/default/sa/web"])
            XCTAssertEqual(seen.header("x-mesh-orig-proto"), [], "the hop's marker never reaches the app")

            // A chunked request body of 300 KB arrives whole; a chunked answer comes back chunked.
            let upload = mesh.directory.appendingPathComponent("upload.bin")
            let payload = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            try payload.write(to: upload)
            let posted = try curl(web.outbound, "/chunked", extra: ["-H", "Transfer-Encoding: chunked", "--data-binary", "@\(upload.path)"])
            XCTAssertEqual(posted.status, 200, posted.head)
            XCTAssertTrue(posted.head.lowercased().contains("transfer-encoding: chunked"), posted.head)
            let received = try JSONDecoder().decode(HTTP1Peer.Seen.self, from: Data(posted.body.utf8))
            XCTAssertEqual(received.method, "POST")
            XCTAssertEqual(received.length, 300_000)
            let digest = try runCapturingOutput("/usr/bin/sha256sum", [upload.path], timeout: 10).out.prefix(64)
            XCTAssertEqual(received.sha256, String(digest))

            // 24 concurrent requests on 24 client connections: the h2 caller's proxy opens one
            // connection to api's proxy; the http1 caller's proxy needs one per request in flight.
            for caller in [web, legacy] {
                // One curl, 24 transfers at once (each on its own connection to the proxy).
                let urls = (0..<24).flatMap { ["-o", "/dev/null", "http://\(caller.outbound)/slow/\($0)"] }
                let result = try runCapturingOutput("/usr/bin/curl", ["-sS", "--http1.1", "--parallel", "--parallel-immediate",
                                                                      "--parallel-max", "24", "--max-time", "10", "-H", "Host: api",
                                                                      "-w", "%{http_code}\n"] + urls, timeout: 20)
                XCTAssertEqual(result.out.split(separator: "\n"), Array(repeating: "200", count: 24), result.err)
            }
            let h2Connections = try await connectionsOpened(web.admin)
            let http1Connections = try await connectionsOpened(legacy.admin)
            XCTAssertEqual(h2Connections, 1, "every request from web rode one HTTP/2 connection")
            XCTAssertGreaterThanOrEqual(http1Connections, 12, "without multiplexing, concurrent requests need connections of their own")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        backend.stop()
        await mesh.shutdown()
    }

    /// Connections the proxy opened towards peers (`mesh_tcp_connections_total`).
    private func connectionsOpened(_ admin: HostPort) async throws -> Double {
        let metrics = try await plainGet(admin, "/metrics").text
        let line = metrics.split(separator: "\n")
            .first { $0.hasPrefix(#"mesh_tcp_connections_total{direction="outbound",peer="dst"}"#) }
        return try XCTUnwrap(line.flatMap { Double($0.split(separator: " ").last ?? "") }, metrics)
    }
}

/// One request with curl (HTTP/1.1) to a proxy's outbound port for service `api`.
private func curl(_ outbound: HostPort, _ path: String, extra: [String] = []) throws -> (status: Int, head: String, body: String) {
    let result = try runCapturingOutput("/usr/bin/curl", ["-sS", "-i", "--http1.1", "--max-time", "10", "-H", "Host: api"] + extra
                                        + ["http://\(outbound)\(path)"], timeout: 15)
    guard result.status == 0 else { throw TestFailure("curl failed (\(result.status)): \(result.err)") }
    let parts = result.out.components(separatedBy: "\r\n\r\n")
    let head = parts.first ?? ""
    let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return (status, head, parts.dropFirst().joined(separator: "\r\n\r\n"))
}
