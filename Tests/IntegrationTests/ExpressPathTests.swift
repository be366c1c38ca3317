import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Simple requests travel the express path (bytes, no HTTP codec) through both sidecars;
/// what an app sends back must reach the caller as the full HTTP stack would pass it on, and
/// the first request the express path does not carry must move the connection to the full
/// stack without the caller noticing.
final class ExpressPathTests: XCTestCase {
    func testWhatAppsReallySendReachesTheCallerOnOneKeptConnection() async throws {
        let mesh = try await TestMesh.start()
        let app = try await ScriptedHTTPApp.start([
            "/length": .init("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
                             + "X-Secret: hop\r\nX-Kept: end-to-end\r\n\r\nhello"),
            "/chunked": .init("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"),
            "/until-close": .init("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the app closes", closeAfter: true),
            "/hints": .init("HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhinted"),
            "/conflict": .init("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            "/empty": .init("HTTP/1.1 204 No Content\r\n\r\n"),
        ])
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // One curl, one connection to the caller's sidecar: `--next` starts another
            // request group on the same connection (num_connects 0 = reused).
            let base = "http://\(web.outbound.host):\(web.outbound.port)"
            let common = ["-sS", "-i", "--max-time", "20", "-H", "Host: api", "-w", "\n@@END %{http_code} connects=%{num_connects}@@\n"]
            var arguments = common + ["\(base)/length", "\(base)/chunked", "\(base)/until-close", "\(base)/hints",
                                      "\(base)/conflict", "\(base)/empty"]
            arguments += ["--next"] + common + ["-I", "\(base)/length"]
            // A body over the express path's limit: it hands the connection to the full stack,
            // which serves it and the next one.
            let large = mesh.directory.appendingPathComponent("large-body")
            try String(repeating: "L", count: 16 * 1024 + 1).write(to: large, atomically: true, encoding: .utf8)
            arguments += ["--next"] + common + ["--data-binary", "@\(large.path)", "\(base)/post"]
            arguments += ["--next"] + common + ["\(base)/length"]
            let run = try runCapturingOutput("/usr/bin/curl", arguments, timeout: 30)
            XCTAssertEqual(run.status, 0, run.err)
            // Each transfer ends with its `-w` marker: the text before it is its answer.
            let parts = run.out.components(separatedBy: "\n@@END ")
            let markers = parts.dropFirst().map { String($0.prefix { $0 != "@" }) }
            let answers = parts.dropLast().enumerated().map { index, part in
                index == 0 ? part : String(part.drop { $0 != "\n" }.dropFirst())
            }
            XCTAssertEqual(markers, ["200 connects=1", "200 connects=0", "200 connects=0", "200 connects=0", "502 connects=0",
                                     "204 connects=0", "200 connects=0", "200 connects=0", "200 connects=0"], run.out)
            guard answers.count == 9 else { return }

            let length = answers[0].lowercased()
            XCTAssertTrue(length.hasSuffix("hello"), answers[0])
            XCTAssertTrue(length.contains("x-kept: end-to-end"), answers[0])
            for hopByHop in ["keep-alive:", "x-secret:", "connection: keep-alive"] {
                XCTAssertFalse(length.contains(hopByHop), "\(hopByHop) passed on: \(answers[0])")
            }
            // curl -i prints the trailer fields after the body.
            XCTAssertTrue(answers[1].contains("\r\n\r\nhello worldx-trailer: t"), "a chunked body and its trailer: \(answers[1])")
            XCTAssertTrue(answers[2].hasSuffix("until the app closes"), answers[2])
            XCTAssertTrue(answers[2].lowercased().contains("transfer-encoding: chunked"),
                          "a body the app ended by closing goes on chunked, the caller's connection stays: \(answers[2])")
            XCTAssertTrue(!answers[3].contains("103") && answers[3].hasSuffix("hinted"),
                          "an interim answer is dropped (as the full stack drops it), the final one goes on: \(answers[3])")
            XCTAssertTrue(answers[4].lowercased().contains("x-mesh-error: bad-response"), "conflicting lengths: \(answers[4])")
            XCTAssertFalse(answers[4].contains("hello!"), "a body of unknown length is not passed on: \(answers[4])")
            XCTAssertTrue(answers[6].lowercased().contains("content-length: 5") && !answers[6].hasSuffix("hello"),
                          "HEAD: the head only: \(answers[6])")
            XCTAssertTrue(answers[7].hasSuffix("ok"), answers[7])
            XCTAssertTrue(answers[8].hasSuffix("hello") && !answers[8].lowercased().contains("keep-alive:"),
                          "the full stack serves the connection on: \(answers[8])")

            // In order, once each — but /conflict: its unreadable answer came on a reused
            // connection, which (as on the full stack) is taken for a connection the app had
            // closed, and the request is sent once more on a new one before the 502.
            let paths = app.requests.filter { $0 != "GET /" }
            XCTAssertEqual(paths, ["GET /length", "GET /chunked", "GET /until-close", "GET /hints", "GET /conflict", "GET /conflict",
                                   "GET /empty", "HEAD /length", "POST /post", "GET /length"], "what reached the app, in order")
            XCTAssertEqual(app.bodies.map(\.count), [16 * 1024 + 1], "the large body reached the app whole")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// API calls with small bodies (`Content-Length`, up to 16 KB) stay on the express path
    /// through both sidecars: the app gets every body whole, also one that comes in pieces
    /// after its head, both sidecars count the bytes, and a request that is not idempotent is
    /// never sent twice (a `GET` whose pooled connection the app closed is, once).
    func testSmallRequestBodiesTravelWholeAndANonIdempotentOneIsNeverSentTwice() async throws {
        let mesh = try await TestMesh.start()
        let app = try await ScriptedHTTPApp.start([
            "/drop": .init("", closeAfter: true),
        ])
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--request-header-timeout", "1s"])
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }
            let edge = ["source_service": "web", "destination_service": "api"]
            func requestBytes(_ admin: HostPort) async throws -> Double {
                Exposition.sum(try await plainGet(admin, "/metrics").text, "mesh_request_body_bytes_total", edge)
            }
            let (callerBefore, calleeBefore) = (try await requestBytes(web.admin), try await requestBytes(api.admin))
            let json = #"{"order": 12345, "items": ["a", "b"], "note": "line: one"}"#
            let put = String(repeating: "0123456789", count: 1_000)
            let pieces: [[UInt8]] = [
                Array("POST /orders HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)".utf8),
                // A head, then its body in two pieces, later.
                Array("PUT /k HTTP/1.1\r\nHost: api\r\nContent-Length: \(put.utf8.count)\r\n\r\n".utf8),
                Array(put.utf8.prefix(4_000)),
                Array(put.utf8.dropFirst(4_000)) + Array("DELETE /k HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n".utf8),
                Array("GET /done HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".utf8),
            ]
            let answers = try await RawSocket.send(pieces, pause: .milliseconds(100), to: web.outbound)
            XCTAssertEqual(answers.components(separatedBy: "HTTP/1.1 200 OK").count, 5, answers)
            XCTAssertEqual(app.requests.filter { $0 != "GET /" }, ["POST /orders", "PUT /k", "DELETE /k", "GET /done"])
            XCTAssertEqual(app.bodies, [json, put], "each body whole, in order")
            // A body slower than the header timeout: the head was in time, the body meets the
            // idle timeout only (as on the full stack).
            let slow = try await RawSocket.send([Array("PATCH /slow HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nConnection: close\r\n\r\n".utf8),
                                                 Array("late".utf8)], pause: .milliseconds(1_500), to: web.outbound)
            XCTAssertTrue(slow.hasPrefix("HTTP/1.1 200 OK"), "a body after the header timeout: \(slow)")
            XCTAssertEqual(app.bodies.last, "late")
            let sent = Double(json.utf8.count + put.utf8.count + 4)
            let (callerAfter, calleeAfter) = (try await requestBytes(web.admin), try await requestBytes(api.admin))
            XCTAssertEqual(callerAfter - callerBefore, sent, "the caller's sidecar counts the body bytes")
            XCTAssertEqual(calleeAfter - calleeBefore, sent, "the callee's sidecar counts the body bytes")

            // The app closes a reused connection without answering: a GET is sent once more on
            // a new connection, a POST is not (the app may have acted on it).
            let get = try await RawSocket.send(Array("GET /warm HTTP/1.1\r\nHost: api\r\n\r\nGET /drop HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".utf8),
                                               to: web.outbound)
            XCTAssertTrue(get.contains("HTTP/1.1 502"), get)
            let post = try await RawSocket.send(Array("GET /warm HTTP/1.1\r\nHost: api\r\n\r\nPOST /drop HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".utf8),
                                                to: web.outbound)
            XCTAssertTrue(post.contains("HTTP/1.1 502"), post)
            let drops = app.requests.filter { $0.hasSuffix(" /drop") }
            XCTAssertEqual(drops, ["GET /drop", "GET /drop", "POST /drop"], "the GET replayed once, the POST never")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// A small body read with its head leaves in the head's write (one TLS record between the
    /// sidecars); one over the limit, or one that comes later, streams as before. Every body
    /// arrives whole and in order, and both sidecars count every byte of it.
    func testBodiesOfEverySizeArriveWholeAndCounted() async throws {
        let mesh = try await TestMesh.start()
        // Text that shows a byte lost, doubled or moved: each line numbered.
        func body(_ size: Int) -> String {
            var text = ""
            var line = 0
            while text.utf8.count < size {
                text += "line \(line) of the body\n"
                line += 1
            }
            return String(text.utf8.prefix(size))!
        }
        let sizes = ["/small": 5, "/limit": 8 * 1024, "/over": 8 * 1024 + 1, "/large": 100_000, "/late": 700]
        var script: [String: ScriptedHTTPApp.Answer] = [:]
        for (path, size) in sizes {
            script[path] = .init("HTTP/1.1 200 OK\r\nContent-Length: \(size)\r\nX-Path: \(path)\r\n\r\n" + body(size),
                                 bodyDelay: path == "/late" ? .milliseconds(50) : nil)
        }
        let app = try await ScriptedHTTPApp.start(script)
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api", path: "/small") }
            let edge = ["source_service": "web", "destination_service": "api"]
            let callerBefore = Exposition.sum(try await plainGet(web.admin, "/metrics").text, "mesh_response_body_bytes_total", edge)
            let calleeBefore = Exposition.sum(try await plainGet(api.admin, "/metrics").text, "mesh_response_body_bytes_total", edge)
            var expected = 0
            for _ in 0..<3 {
                for path in ["/small", "/limit", "/over", "/large", "/late"] {
                    let response = try await callThroughMesh(web.outbound, service: "api", path: path)
                    XCTAssertEqual(response.status.code, 200, path)
                    XCTAssertEqual(response.headers.first(name: "x-path"), path)
                    XCTAssertEqual(response.text, body(sizes[path] ?? 0), "\(path): the body as the app sent it")
                    expected += sizes[path] ?? 0
                }
            }
            let caller = try await plainGet(web.admin, "/metrics").text
            let callee = try await plainGet(api.admin, "/metrics").text
            XCTAssertEqual(Exposition.sum(caller, "mesh_response_body_bytes_total", edge) - callerBefore, Double(expected), caller)
            XCTAssertEqual(Exposition.sum(callee, "mesh_response_body_bytes_total", edge) - calleeBefore, Double(expected), callee)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// An app that takes the request and never answers: the caller's connection still
    /// closes after the idle timeout (on the express path only real reads and writes count
    /// as activity, as on the full stack), and the proxy serves on.
    func testAnAnswerThatNeverComesEndsWithTheIdleTimeout() async throws {
        let mesh = try await TestMesh.start()
        let silent = try await HalfCloseServer.start()
        do {
            _ = try await mesh.proxy("api", app: silent.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--idle-timeout", "1s"])
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "nosuch").status.code
                if status != 503 { throw TestFailure("outbound not ready: \(status)") }
            }
            let started = ContinuousClock.now
            let answer = try await RawSocket.send(Array("GET /never HTTP/1.1\r\nHost: api\r\n\r\n".utf8), to: web.outbound)
            let elapsed = ContinuousClock.now - started
            XCTAssertEqual(answer, "", "nothing to say: the app never answered")
            XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(900), "closed before the idle timeout")
            XCTAssertLessThan(elapsed, .seconds(4), "a caller waiting for an answer that never comes is never let go")
            let still = try await callThroughMesh(web.outbound, service: "nosuch")
            XCTAssertEqual(still.status.code, 503, "the proxy serves on")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await silent.stop()
        await mesh.shutdown()
    }
}
