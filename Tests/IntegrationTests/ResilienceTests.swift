import Foundation
import MeshCore
import MeshTesting
import NIOConcurrencyHelpers
import XCTest

/// Certificates rotate and the control plane restarts without a single failed request.
final class ResilienceTests: XCTestCase {
    func testSVIDRenewalUnderContinuousTrafficFailsNoRequest() async throws {
        let mesh = try await TestMesh.start(svidTTL: "6s")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // 12 s of traffic from 4 concurrent callers spans at least three renewals per proxy.
            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .seconds(12))
            await load.stop()
            XCTAssertEqual(load.failures.withLockedValue { $0 }, [])
            XCTAssertGreaterThan(load.successes.withLockedValue { $0 }, 100)
            for proxy in [api, web] {
                let installs = proxy.process.log.components(separatedBy: "SVID installed").count - 1
                XCTAssertGreaterThanOrEqual(installs, 3, "expected the join and at least two renewals")
            }
            print("requests during renewal: \(load.successes.withLockedValue { $0 }) ok, 0 failed")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testControlPlaneRestartKeepsTheCAAndTrafficFlowsWhileItIsDown() async throws {
        let mesh = try await TestMesh.start()
        let first = try await TestApp.start("api-1")
        let second = try await TestApp.start("api-2")
        do {
            _ = try await mesh.proxy("api", app: first.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }
            let bundleBefore = try String(contentsOf: mesh.caFile, encoding: .utf8)
            let keyBefore = try Data(contentsOf: mesh.dataDir.appendingPathComponent("ca.key"))

            try await mesh.restartControl(downtime: .seconds(2)) {
                // Control plane down: existing proxies keep serving from their last config.
                for _ in 0..<20 {
                    let response = try await callThroughMesh(web.outbound, service: "api")
                    XCTAssertEqual(response.status.code, 200, "request failed while the control plane was down")
                }
            }
            XCTAssertEqual(try String(contentsOf: mesh.caFile, encoding: .utf8), bundleBefore, "the CA changed on restart")
            XCTAssertEqual(try Data(contentsOf: mesh.dataDir.appendingPathComponent("ca.key")), keyBefore)

            // Proxies reconnected: a new instance joining the restarted control plane reaches web.
            _ = try await mesh.proxy("api", app: second.address)
            try await waitUntil(timeout: .seconds(10)) {
                _ = try? await callThroughMesh(web.outbound, service: "api")
                return !second.requests.isEmpty
            }
            let listing = try await MeshProcess.runToEnd(["services", "--admin", mesh.admin.description,
                                                          "--data-dir", mesh.dataDir.path])
            XCTAssertEqual(listing.status, 0, listing.err)
            XCTAssertTrue(listing.out.contains("web"), listing.out)
            XCTAssertEqual(listing.out.components(separatedBy: "\napi ").count - 1, 2, "two api instances expected:\n\(listing.out)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await first.stop()
        await second.stop()
        await mesh.shutdown()
    }
}
