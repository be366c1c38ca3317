import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import XCTest

/// `mesh tap`: live requests from real proxies through the control plane, filtered, bounded
/// by a rate, ending with the command.
final class TapTests: XCTestCase {
    func testTapStreamsRequestsWithHopTimingsFiltersAndStops() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let admin = ["--admin", mesh.admin.description, "--data-dir", mesh.dataDir.path]

            // 1. Tap api: its proxy's inbound view of each request, with the app's share.
            let tap = try MeshProcess(["tap", "api", "-o", "json"] + admin, logDirectory: mesh.directory)
            defer { tap.process.terminate() }
            try await waitUntil(timeout: .seconds(10)) { tap.log.contains("# tapping api: 1 proxy sampling") }
            // The order reaches the proxy on its watch stream within milliseconds.
            try await Task.sleep(for: .milliseconds(300))
            for index in 1...8 {
                let status = try await callThroughMesh(web.outbound, service: "api", path: "/orders/\(index)?secret=x").status.code
                XCTAssertEqual(status, 200)
            }
            let events = try await eventually(timeout: .seconds(10), interval: .milliseconds(200)) { () -> [TapEvent] in
                let events = tap.output.compactMap { try? JSONCoding.decoder.decode(TapEvent.self, from: Data($0.utf8)) }
                guard events.count >= 8 else { throw TestFailure("\(events.count) tapped requests so far:\n\(tap.output)\n\(tap.log)") }
                return events
            }
            let services = try await mesh.services()
            let apiInstance = try XCTUnwrap(services.first { $0.service.rawValue == "api" }?.instances.first?.id)
            XCTAssertEqual(events.map(\.path), (1...8).map { "/orders/\($0)" }, "in order, without the query string")
            for event in events {
                XCTAssertEqual(event.direction, "inbound")
                XCTAssertEqual(event.source, "web")
                XCTAssertEqual(event.sourceIdentity, "spiffe://mesh.local/ns/default/sa/web")
                XCTAssertEqual(event.destination, "api")
                XCTAssertEqual(event.method, "GET")
                XCTAssertEqual(event.status, 200)
                XCTAssertTrue(event.tls)
                XCTAssertEqual(event.instance, apiInstance)
                XCTAssertEqual(Set(event.hopsMs?.keys ?? [:].keys), ["proxy", "app"])
                XCTAssertGreaterThanOrEqual(event.durationMs, event.hopsMs?["app"] ?? .infinity)
                XCTAssertNotNil(event.decision, "the policy decision (audit default here)")
            }

            // 2. Tap the caller with a filter and a count: the four-part split, then the end.
            let caller = try MeshProcess(["tap", "web", "--to", "api", "--path", "/slow", "--max", "3"] + admin,
                                         logDirectory: mesh.directory)
            try await waitUntil(timeout: .seconds(10)) { caller.log.contains("# tapping web") }
            try await Task.sleep(for: .milliseconds(300))
            for path in ["/fast", "/slow/1", "/fast", "/slow/2", "/slow/3", "/slow/4"] {
                _ = try await callThroughMesh(web.outbound, service: "api", path: path)
            }
            try await waitUntil(timeout: .seconds(10)) { !caller.process.isRunning }
            XCTAssertEqual(caller.process.terminationStatus, 0, "--max 3 ends the tap: \(caller.log)")
            let lines = caller.output
            XCTAssertEqual(lines.count, 3, lines.joined(separator: "\n"))
            for (line, path) in zip(lines, ["/slow/1", "/slow/2", "/slow/3"]) {
                XCTAssertTrue(line.contains("out  web → api  GET \(path)  200"), line)
                XCTAssertTrue(line.contains("[caller-proxy ") && line.contains(" network ") && line.contains(" peer-proxy ") && line.contains(" app "),
                              "hop timings of the caller's view: \(line)")
                XCTAssertTrue(line.contains("mtls"), line)
            }

            // 3. Bounded: at most --rate requests per second per proxy; the rest are counted.
            let limited = try MeshProcess(["tap", "api", "--rate", "2", "-o", "json"] + admin, logDirectory: mesh.directory)
            defer { limited.process.terminate() }
            try await waitUntil(timeout: .seconds(10)) { limited.log.contains("# tapping api") }
            try await Task.sleep(for: .milliseconds(300))
            let start = ContinuousClock.now
            for _ in 0..<60 {
                _ = try await callThroughMesh(web.outbound, service: "api", path: "/burst")
            }
            let elapsed = ContinuousClock.now - start
            try await waitUntil(timeout: .seconds(10)) { limited.log.contains("over the rate were left out") }
            let sampled = limited.output.filter { $0.contains("/burst") }.count
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            XCTAssertGreaterThan(sampled, 0)
            XCTAssertLessThanOrEqual(sampled, Int(2 * seconds) + 3, "2/s over \(seconds) s plus the bucket's burst")

            // 4. The tap ends with the command: the proxy stops sampling.
            tap.process.terminate()
            limited.process.terminate()
            let apiProxy = try XCTUnwrap(mesh.proxies.first)
            try await waitUntil(timeout: .seconds(10)) { apiProxy.log.contains("tap ended") }

            // 5. A service that does not exist is a clear error.
            let missing = try await mesh.cli(["tap", "nope"])
            XCTAssertNotEqual(missing.status, 0)
            XCTAssertTrue(missing.err.contains("no service named 'nope'"), missing.err)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
