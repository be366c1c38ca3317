import Foundation
import MeshCore
import MeshTesting
import XCTest

/// gRPC through the mesh with PyPI's grpcio on both ends: h2c from the client to its proxy,
/// HTTP/2 over mTLS between the proxies, h2c to the server; unary and bidirectional streaming
/// calls, status codes in trailers, L7 policy on the gRPC path, balancing per call, and the
/// calls multiplexed on one connection per endpoint.
final class GRPCTests: XCTestCase {
    func testUnaryAndBidirectionalStreamingThroughTheMesh() async throws {
        guard GRPCPeer.available else {
            // CI installs grpcio from PyPI and sets MESH_REQUIRE_TOOLS=1.
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                XCTFail("python3 module grpcio is required (MESH_REQUIRE_TOOLS=1) but not installed")
            }
            throw XCTSkip("python3 module grpcio not installed (pip install grpcio)")
        }
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let first = try await GRPCPeer.startServer(name: "a")
        let second = try await GRPCPeer.startServer(name: "b")
        do {
            let policy = mesh.directory.appendingPathComponent("grpc.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-calls-echo}
                spec:
                  selector: {service: greeter}
                  rules: [{from: [{services: [web]}], to: [{methods: [POST], paths: ["/test.Echo/*"]}]}]
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("greeter", app: first.address)
            _ = try await mesh.proxy("greeter", app: second.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil { ((try? await mesh.services()) ?? []).first { $0.service.rawValue == "greeter" }?.instances.count == 2 }
            try await Task.sleep(for: .milliseconds(300))

            let result = try await GRPCPeer.call(web.outbound, authority: "greeter", count: 40)
            XCTAssertEqual(result.unary.count, 40)
            for (i, answer) in result.unary.enumerated() {
                XCTAssertTrue(answer.hasPrefix("echo:hello-\(i)@"), answer)
            }
            let servers = Set(result.unary.compactMap { $0.split(separator: "@").last.map(String.init) })
            XCTAssertEqual(servers, ["a", "b"], "calls are balanced one by one over both instances")
            // A status from the server travels in the trailers, untouched.
            XCTAssertEqual(result.errors, ["NOT_FOUND no such thing"])
            // Bidirectional streaming: forty messages each way on one call.
            XCTAssertEqual(result.chat, (0..<40).map { "chat:m\($0)" })

            // 42 calls, and web's proxy opened one connection per greeter instance: the calls
            // were multiplexed as HTTP/2 streams.
            let metrics = try await plainGet(web.admin, "/metrics").text
            let opened = metrics.split(separator: "\n")
                .first { $0.hasPrefix(#"mesh_tcp_connections_total{direction="outbound",peer="dst"}"#) }
                .flatMap { Double($0.split(separator: " ").last ?? "") }
            XCTAssertEqual(opened, 2, metrics)
            let answered = metrics.split(separator: "\n").first {
                $0.hasPrefix("mesh_requests_total{") && $0.contains(#"destination_service="greeter""#) && $0.contains(#"status_code="200""#)
            }
            XCTAssertNotNil(answered, "the calls are counted per edge like any request: \(metrics)")

            // A caller no policy allows gets PERMISSION_DENIED (HTTP 403 in gRPC's mapping).
            let intruder = try await mesh.proxy("intruder", app: HostPort(host: "127.0.0.1", port: 9))
            do {
                _ = try await GRPCPeer.call(intruder.outbound, authority: "greeter", count: 1)
                XCTFail("the intruder's call should fail")
            } catch let failure as TestFailure {
                XCTAssertTrue(failure.description.contains("PERMISSION_DENIED"), failure.description)
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        first.stop()
        second.stop()
        await mesh.shutdown()
    }

    /// Callers that go away with hundreds of calls in flight (h2load stops mid-run three
    /// times, cancelling every open stream) leave the mesh serving: the next calls succeed.
    /// Cancelled streams once stayed counted as open inside swift-nio-http2 until a
    /// connection took no new stream; connections that saw many resets are now replaced.
    func testCancelledStreamsNeverWedgeTheMesh() async throws {
        let h2load = try requireGRPCAndH2load()
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let server = try await GRPCPeer.startServer(name: "a", maxStreams: 8)
        do {
            let (greeter, web, body) = try await greeterBehindEightStreamApp(mesh, server)
            // The gRPC-framed "hello" posted as unary calls, 160 in flight, cut off after 2 s.
            for round in 1...3 {
                let run = try await Task.detached {
                    try runCapturingOutput(h2load, ["-t1", "-c16", "-m10", "-D", "2", "-d", body.path,
                                                   "-H", ":authority: greeter", "-H", "content-type: application/grpc",
                                                   "-H", "te: trailers", "http://\(web.outbound)/test.Echo/Unary"], timeout: 30)
                }.value
                let done = run.out.split(separator: "\n").first { $0.hasPrefix("requests:") } ?? ""
                print("cancellation round \(round): \(done)")
                XCTAssertTrue(done.contains(" succeeded") && !done.contains(" 0 succeeded"), "round \(round): \(run.out.suffix(1500))")
                XCTAssertTrue(done.contains(" 0 failed"), "no call fails for the app's stream limit: \(done)")
            }
            let after = try await GRPCPeer.call(web.outbound, authority: "greeter", count: 10)
            XCTAssertEqual(after.unary.count, 10, "calls after the cancellations are served")
            let metrics = try await plainGet(greeter.admin, "/metrics").text
            let toApp = metrics.split(separator: "\n")
                .first { $0.hasPrefix(#"mesh_tcp_connections_total{direction="outbound",peer="dst"}"#) }
                .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            print("connections from greeter's proxy to its app (8 streams each): \(Int(toApp))")
            XCTAssertGreaterThanOrEqual(toApp, 4, "160 calls in flight need several connections of 8 streams")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        server.stop()
        await mesh.shutdown()
    }

    /// The connections a burst opens to an app that takes 8 streams at once stay through a
    /// lull (the next burst, a second later, opens few or none: each would be a handshake to
    /// a peer proxy), and the extra ones close after 10 s without a stream; the first stays.
    func testExtraConnectionsOutliveALullAndCloseWhenIdle() async throws {
        let h2load = try requireGRPCAndH2load()
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let server = try await GRPCPeer.startServer(name: "a", maxStreams: 8)
        do {
            let (greeter, web, body) = try await greeterBehindEightStreamApp(mesh, server)
            // 1600 unary calls, 160 in flight: about 20 connections of 8 streams each.
            func burst() async throws {
                let run = try await Task.detached {
                    try runCapturingOutput(h2load, ["-t1", "-c16", "-m10", "-n", "1600", "-d", body.path,
                                                   "-H", ":authority: greeter", "-H", "content-type: application/grpc",
                                                   "-H", "te: trailers", "http://\(web.outbound)/test.Echo/Unary"], timeout: 60)
                }.value
                let done = run.out.split(separator: "\n").first { $0.hasPrefix("requests:") } ?? ""
                XCTAssertTrue(done.contains(" 1600 succeeded"), run.out.suffix(1500).description)
            }
            func toApp() async throws -> (open: Double, opened: Double) {
                let metrics = try await plainGet(greeter.admin, "/metrics").text.split(separator: "\n")
                func value(_ name: String) -> Double {
                    metrics.first { $0.hasPrefix(name + #"{direction="outbound",peer="dst"}"#) }
                        .flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
                }
                return (value("mesh_tcp_connections_open"), value("mesh_tcp_connections_total"))
            }

            try await burst()
            let first = try await toApp()
            print("greeter's proxy to its app after the first burst: \(first)")
            XCTAssertGreaterThanOrEqual(first.opened, 4, "160 calls in flight need several connections of 8 streams")
            try await Task.sleep(for: .seconds(1))
            let lull = try await toApp()
            XCTAssertEqual(lull.open, first.open, "the connections stay through a one-second lull")
            try await burst()
            let second = try await toApp()
            print("after the second burst: \(second)")
            // How many more it needs depends on how many calls the app holds at the peak (up
            // to 20 connections' worth): fewer than the first burst opened, as it starts with those.
            XCTAssertLessThan(second.opened - first.opened, first.opened, "the second burst reuses the connections the first one opened")

            let closedAfter = try await waitUntil(timeout: .seconds(25)) { (try? await toApp().open) == 1 }
            print("extra connections closed \(closedAfter) after the second burst")
            XCTAssertGreaterThanOrEqual(closedAfter, .seconds(8), "extra connections stay about 10 s after their last stream")
            let calm = try await GRPCPeer.call(web.outbound, authority: "greeter", count: 5)
            XCTAssertEqual(calm.unary.count, 5, "calls after the extras closed use the connection that stayed")
            let after = try await toApp()
            XCTAssertEqual(after.opened, second.opened, "and open none")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        server.stop()
        await mesh.shutdown()
    }

    /// The path of h2load; skips the test (fails it under MESH_REQUIRE_TOOLS=1, as in CI) when
    /// h2load (nghttp2-client, Debian) or grpcio (PyPI) is missing.
    private func requireGRPCAndH2load() throws -> String {
        let h2load = "/usr/bin/h2load"
        guard GRPCPeer.available, FileManager.default.isExecutableFile(atPath: h2load) else {
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                XCTFail("grpcio (PyPI) and h2load (nghttp2-client) are required (MESH_REQUIRE_TOOLS=1)")
            }
            throw XCTSkip("grpcio or h2load not installed")
        }
        return h2load
    }

    /// `greeter` in front of `server` (an app that takes 8 streams at once per connection: the
    /// proxy opens more connections rather than queue streams inside the HTTP/2 layer), a `web`
    /// caller that has reached it once, and a gRPC-framed "hello" for h2load to post.
    private func greeterBehindEightStreamApp(_ mesh: TestMesh, _ server: GRPCPeer.Server) async throws
        -> (greeter: TestMesh.Proxy, web: TestMesh.Proxy, body: URL) {
        let greeter = try await mesh.proxy("greeter", app: server.address, extra: ["--threads", "1"])
        let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
        try await waitUntil { ((try? await mesh.services()) ?? []).contains { $0.service.rawValue == "greeter" } }
        _ = try await eventually { try await GRPCPeer.call(web.outbound, authority: "greeter", count: 1) }
        let body = mesh.directory.appendingPathComponent("call.bin")
        try Data([0, 0, 0, 0, 5] + Array("hello".utf8)).write(to: body)
        return (greeter, web, body)
    }
}
