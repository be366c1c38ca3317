import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Hostile HTTP from an app gets a clear answer or a closed connection; the proxy stays up.
final class HostileHTTPTests: XCTestCase {
    func testHeaderLimitsAnswer431AtTheirBoundaries() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // host + connection + 98 = 100 fields: allowed.
            var atLimit = APIClientFactory.outbound(web.outbound, service: "api")
            atLimit.extraHeaders = (0..<98).map { ("x-field-\($0)", "v") }
            let allowed = try await atLimit.get("/at-limit")
            XCTAssertEqual(allowed.status.code, 200, allowed.text)

            var overLimit = atLimit
            overLimit.extraHeaders.append(("x-one-more", "v"))
            let refused = try await overLimit.get("/over-limit")
            XCTAssertEqual(refused.status.code, 431, refused.text)

            var huge = APIClientFactory.outbound(web.outbound, service: "api")
            huge.extraHeaders = [("x-big", String(repeating: "a", count: 62 * 1024))]
            let tooBig = try await huge.get("/too-big")
            XCTAssertEqual(tooBig.status.code, 431, tooBig.text)
            XCTAssertFalse(app.requests.contains { $0.path == "/over-limit" || $0.path == "/too-big" })

            // Garbage instead of HTTP: a 400 and a close, and the proxy keeps serving.
            let garbage = try await RawSocket.send(Array("\u{0}\u{1}NOT HTTP\r\n\r\n".utf8), to: web.outbound)
            XCTAssertTrue(garbage.hasPrefix("HTTP/1.1 400"), garbage)
            XCTAssertTrue(garbage.contains("malformed HTTP request"), garbage)
            let still = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(still.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testSlowRequestHeadersAreCutOff() async throws {
        let mesh = try await TestMesh.start()
        do {
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9),
                                           extra: ["--request-header-timeout", "1s"])
            /// Sends `text` and waits for the proxy to close the connection: how long it took
            /// (the proxy must not answer).
            func timeToClose(_ text: String) async throws -> Duration {
                let started = ContinuousClock.now
                let answer = try await RawSocket.send(Array(text.utf8), to: web.outbound)
                XCTAssertEqual(answer, "", text)
                return ContinuousClock.now - started
            }
            // Headers that never end: the proxy must close the connection by itself.
            let elapsed = try await timeToClose("GET / HTTP/1.1\r\nHost: api\r\nX-Slow: ")
            XCTAssertLessThan(elapsed, .seconds(4), "the slow request was not cut off")
            XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(900))

            // The same from a request the express path hands to the full stack (a method it
            // does not carry): the clock it ran goes on in the full stack's pipeline.
            let handedElapsed = try await timeToClose("OPTIONS / HTTP/1.1\r\nHost: api\r\nX-Slow: ")
            XCTAssertLessThan(handedElapsed, .seconds(4), "the slow request handed to the full stack was not cut off")
            XCTAssertGreaterThanOrEqual(handedElapsed, .milliseconds(900))

            // Too few bytes to tell the protocol: the detector gives up after the same time
            // and hands them to the HTTP stack, whose header clock still runs.
            let shortElapsed = try await timeToClose("GET")
            XCTAssertLessThan(shortElapsed, .seconds(5), "three bytes held the connection open")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testAmbiguousBodyFramingCannotSmuggleASecondRequest() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }
            let before = app.requests.count
            let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n"
            let chunk = String(smuggled.utf8.count, radix: 16)
            // A GET whose de-chunked body is itself a request, with an odd-case coding.
            let oddCase = "GET /first HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n"
                + "\(chunk)\r\n\(smuggled)\r\n0\r\n\r\n"
            let answer = try await RawSocket.send(Array(oddCase.utf8), to: web.outbound)
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200"), answer)
            // Codings other than plain chunked, TRACE with a body, conflicting lengths: 400.
            for request in [
                "POST /x HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n\(chunk)\r\n\(smuggled)\r\n0\r\n\r\n",
                "TRACE /x HTTP/1.1\r\nHost: api\r\nContent-Length: \(smuggled.utf8.count)\r\nConnection: close\r\n\r\n\(smuggled)",
            ] {
                let refused = try await RawSocket.send(Array(request.utf8), to: web.outbound)
                XCTAssertTrue(refused.hasPrefix("HTTP/1.1 400"), refused)
            }
            try await Task.sleep(for: .milliseconds(300))
            let paths = app.requests.dropFirst(before).map(\.path)
            XCTAssertEqual(paths, ["/first"], "the app saw \(paths)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// The proxy writes headers without a second validation pass (it costs a pipeline hop per
    /// message): whatever a client sends, no CR, LF or NUL may reach the app in a header, and
    /// no header may be injected.
    func testHeaderValuesCannotCarryLineBreaksToTheApp() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }
            for (path, header) in [("/folded", "X-Fold: a\r\n Injected: folded"), ("/bare-cr", "X-CR: a\rInjected: cr"),
                                   ("/bare-lf", "X-LF: a\nInjected: lf"), ("/nul", "X-Nul: a\u{0}b")] {
                let request = "GET \(path) HTTP/1.1\r\nHost: api\r\n\(header)\r\nConnection: close\r\n\r\n"
                let answer = try await RawSocket.send(Array(request.utf8), to: web.outbound)
                XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400") || answer.hasPrefix("HTTP/1.1 200"), "\(path): \(answer)")
            }
            try await Task.sleep(for: .milliseconds(300))
            for seen in app.requests {
                for (name, value) in seen.headers {
                    XCTAssertNotEqual(name.lowercased(), "injected", "\(seen.path) injected a header")
                    XCTAssertFalse(value.contains { $0 == "\r" || $0 == "\n" || $0 == "\r\n" || $0 == "\u{0}" },
                                   "\(seen.path): \(name) carries a line break or NUL to the app")
                }
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
