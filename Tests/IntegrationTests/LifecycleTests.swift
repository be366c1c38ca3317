import Foundation
import MeshCore
import MeshTesting
import NIOConcurrencyHelpers
import XCTest

/// Starting and stopping: SIGTERM drains, `mesh demo` works from one command and stops clean.
final class LifecycleTests: XCTestCase {
    func testSIGTERMLetsInFlightRequestsFinishThenDeregistersAndExitsZero() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            let slow = Task { try await callThroughMesh(web.outbound, service: "api", path: "/slow") }
            try await waitUntil { app.requests.contains { $0.path == "/slow" } }
            let status = await api.process.stop(signal: SIGTERM)
            XCTAssertEqual(status, 0)
            let response = try await slow.value
            XCTAssertEqual(response.status.code, 200, "the in-flight request was cut off: \(response.text)")
            XCTAssertTrue(api.process.log.contains("deregistered from the control plane"), api.process.log)

            let after = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(after.status.code, 503)
            XCTAssertTrue(after.text.contains("no endpoints") || after.text.contains("unknown service"), after.text)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testMeshDemoServesARequestThroughThreeServicesAndStopsCleanlyOnCtrlC() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-demo-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let demo = try MeshProcess(["demo", "--entry-port", "0", "--traffic-interval", "0.2",
                                    "--data-dir", directory.appendingPathComponent("data").path], logDirectory: directory)
        do {
            _ = try await demo.waitForLine(prefix: "first request through the mesh succeeded")
            let curlLine = try XCTUnwrap(demo.output.first { $0.contains("curl -s -H 'Host: web'") })
            let address = try XCTUnwrap(curlLine.split(separator: " ").last?.replacingOccurrences(of: "http://", with: "")
                .replacingOccurrences(of: "/", with: ""))
            let response = try await callThroughMesh(try HostPort(parsing: address), service: "web")
            XCTAssertEqual(response.status.code, 200, response.text)
            for caller in ["sa/loadgen", "sa/web", "sa/api"] {
                XCTAssertTrue(response.text.contains(caller), "\(caller) missing in \(response.text)")
            }
            XCTAssertTrue(response.text.contains("apples"), response.text)
        } catch {
            XCTFail("\(error)\n\(demo.log.suffix(4000))")
        }
        let status = await demo.stop(signal: SIGINT)
        XCTAssertEqual(status, 0, demo.log.suffix(3000).description)
        XCTAssertTrue(demo.output.contains { $0.hasPrefix("demo stopped") })
        // Stopping is not a failure: the control plane's loops, cancelled mid-read, once
        // logged "SQLite store error: CancellationError() [store-failure]" warnings.
        XCTAssertFalse(demo.log.contains("store-failure"), demo.log.suffix(3000).description)
    }
}
