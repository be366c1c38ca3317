import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Bodies pass through the proxies as they come, in both directions, and never pile up in
/// them: an event stream reaches its caller event by event, a download larger than any buffer
/// goes through without being gathered in either proxy, and an upload to an app that is not
/// reading waits in the sockets, not in the proxies. Each through both kinds of hop between the
/// proxies: a pool of HTTP/1.1 connections (the default) and multiplexed HTTP/2
/// (`--peer-protocol h2`).
final class StreamingBodyTests: XCTestCase {
    func testAnEventStreamReachesTheCallerEventByEvent() async throws {
        try await withCallers { app, _, callers in
            defer { app.releaseEvents() }
            for (hop, caller) in callers {
                let client = try RawTCPClient(caller.outbound)
                try client.send("GET /events HTTP/1.1\r\nHost: api\r\n\r\n")
                let (head, rest) = client.receiveHead(timeout: .seconds(5))
                XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), "\(hop): the head of a streamed answer goes out at once: \(head)")
                var body = String(decoding: rest, as: UTF8.self)
                body += receive(client, until: "data: first", in: body, timeout: .seconds(5))
                XCTAssertTrue(body.contains("data: first"), "\(hop): the first event arrives while the app holds the second: \(body)")
                XCTAssertFalse(body.contains("second"), body)
                app.releaseEvents()
                body += receive(client, until: "0\r\n\r\n", in: body, timeout: .seconds(5))
                XCTAssertTrue(body.contains("data: second"), "\(hop): \(body)")
                XCTAssertTrue(body.hasSuffix("0\r\n\r\n"), "\(hop): the stream ends with its last chunk: \(body)")
            }
        }
    }

    func testADownloadLargerThanAnyBufferGoesThroughWithoutBeingHeld() async throws {
        try await withCallers { _, api, callers in
            let size = 32 << 20
            for (hop, caller) in callers {
                let before = (caller: peakKB(caller), api: peakKB(api))
                let client = try RawTCPClient(caller.outbound)
                try client.send("GET /bulk?bytes=\(size) HTTP/1.1\r\nHost: api\r\n\r\n")
                let (head, rest) = client.receiveHead(timeout: .seconds(10))
                XCTAssertTrue(head.hasPrefix("HTTP/1.1 200"), "\(hop): \(head)")
                // The caller stops reading for a while, part way: the proxies must stop reading
                // their upstream meanwhile, and start again when the caller does.
                var body = rest.count + client.receiveBytes(count: (1 << 20) - rest.count, timeout: .seconds(10)).count
                try await Task.sleep(for: .seconds(1.5))
                body += client.receiveBytes(count: size - body, timeout: .seconds(30)).count
                XCTAssertEqual(body, size, "\(hop): the whole body arrives")
                // The body passes through; it is not gathered in either proxy.
                XCTAssertLessThan(peakKB(caller) - before.caller, size / 2 / 1024, "\(hop): the caller's proxy held the body")
                XCTAssertLessThan(peakKB(api) - before.api, size / 2 / 1024, "\(hop): the app's proxy held the body")
            }
        }
    }

    func testAnUploadToAnAppThatIsNotReadingWaitsInsteadOfPilingUpInTheProxies() async throws {
        try await withCallers { _, api, callers in
            let size = 48 << 20
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("upload-\(UUID().uuidString.prefix(8))")
            try Data(repeating: UInt8(ascii: "u"), count: size).write(to: file)
            defer { try? FileManager.default.removeItem(at: file) }
            for (hop, caller) in callers {
                let before = (caller: peakKB(caller), api: peakKB(api))
                // The app stops reading for `BulkApp.uploadStall` once the head is in: meanwhile
                // curl can send only as much as the sockets on the way hold, if the proxies
                // stop reading their caller when their upstream is full.
                let run = try runCapturingOutput("/usr/bin/curl", [
                    "-sS", "--max-time", "60", "-H", "Host: api", "-H", "Expect:",
                    "--data-binary", "@\(file.path)", "http://\(caller.outbound.host):\(caller.outbound.port)/upload",
                ], timeout: 70)
                XCTAssertEqual(run.status, 0, "\(hop): \(run.err)")
                XCTAssertEqual(run.out, "received \(size)", "\(hop): the app gets the whole body")
                XCTAssertLessThan(peakKB(caller) - before.caller, size / 2 / 1024, "\(hop): the caller's proxy gathered the upload")
                XCTAssertLessThan(peakKB(api) - before.api, size / 2 / 1024, "\(hop): the app's proxy gathered the upload")
            }
        }
    }

    // MARK: - Setup

    /// A mesh with `api` (a ``BulkApp``) and two callers, `web` over HTTP/1.1 to api's proxy
    /// and `web-h2` over HTTP/2, both routed before `body` runs.
    private func withCallers(_ body: (BulkApp, TestMesh.Proxy, [(String, TestMesh.Proxy)]) async throws -> Void) async throws {
        let mesh = try await TestMesh.start()
        let app = try await BulkApp.start()
        do {
            let api = try await mesh.proxy("api", app: app.address, extra: ["--threads", "1"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--threads", "1"])
            let webH2 = try await mesh.proxy("web-h2", app: HostPort(host: "127.0.0.1", port: 9),
                                             extra: ["--threads", "1", "--peer-protocol", "h2"])
            for caller in [web, webH2] {
                _ = try await eventually {
                    let client = try RawTCPClient(caller.outbound)
                    try client.send("GET /bulk?bytes=2 HTTP/1.1\r\nHost: api\r\n\r\n")
                    let head = client.receiveHead(timeout: .seconds(2)).head
                    guard head.hasPrefix("HTTP/1.1 200") else { throw TestFailure("not routed yet: \(head)") }
                }
            }
            try await body(app, api, [("HTTP/1.1 between the proxies", web), ("HTTP/2 between the proxies", webH2)])
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// Reads until `marker` is in what was read so far (`seen` plus the new bytes), a close,
    /// or `timeout`; returns the new bytes.
    private func receive(_ client: RawTCPClient, until marker: String, in seen: String, timeout: Duration) -> String {
        var more = ""
        let deadline = ContinuousClock.now + timeout
        while !(seen + more).contains(marker), ContinuousClock.now < deadline {
            more += client.receive(count: 1, timeout: .milliseconds(200))
        }
        return more
    }

    /// The proxy process's peak resident memory so far (VmHWM), in KiB.
    private func peakKB(_ proxy: TestMesh.Proxy) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(proxy.process.process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
}
