import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Services find each other: instances join and leave everyone's endpoint set within 2 s.
final class DiscoveryTests: XCTestCase {
    func testNewInstanceBecomesRoutableAndStoppedOnesStopReceivingTrafficWithinTwoSeconds() async throws {
        let mesh = try await TestMesh.start(heartbeatTTL: "1500ms")
        let first = try await TestApp.start("api-1")
        let second = try await TestApp.start("api-2")
        let third = try await TestApp.start("api-3")
        do {
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await mesh.proxy("api", app: first.address, labels: ["version=v1"])
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // A new instance: routable within 2 s of its proxy being ready.
            let secondProxy = try await mesh.proxy("api", app: second.address, labels: ["version=v2"])
            let joined = try await waitUntil(timeout: .seconds(2)) {
                _ = try? await callThroughMesh(web.outbound, service: "api")
                return !second.requests.isEmpty
            }
            print("new instance routable after \(joined)")

            // A graceful stop (SIGTERM) deregisters: no more traffic within 2 s, no failures.
            let status = await secondProxy.process.stop(signal: SIGTERM)
            XCTAssertEqual(status, 0, "the proxy should exit 0 on SIGTERM")
            try await assertNoTraffic(to: second, through: web.outbound, within: .seconds(2))

            // A crash (SIGKILL, no deregistration): the heartbeat TTL removes it.
            let thirdProxy = try await mesh.proxy("api", app: third.address)
            try await waitUntil(timeout: .seconds(2)) {
                _ = try? await callThroughMesh(web.outbound, service: "api")
                return !third.requests.isEmpty
            }
            let killedAt = ContinuousClock.now
            await thirdProxy.process.stop(signal: SIGKILL)
            try await assertNoTraffic(to: third, through: web.outbound, within: .seconds(2.5))
            // …and the registry itself drops it once the heartbeat TTL (1.5 s) has passed.
            try await waitUntil(timeout: .seconds(3)) {
                (try? await mesh.services().first { $0.service.rawValue == "api" }?.instances.count) == 1
            }
            print("crashed instance left the registry within \(ContinuousClock.now - killedAt) of the kill")

            // The survivor kept answering throughout.
            let after = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(after.text, "hello from api-1\n")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        for app in [first, second, third] { await app.stop() }
        await mesh.shutdown()
    }

    /// Sends requests until `app` has seen none for a while; fails if that takes longer than
    /// `within` or if any request fails.
    private func assertNoTraffic(to app: TestApp, through outbound: HostPort, within: Duration) async throws {
        let start = ContinuousClock.now
        var quietSince: ContinuousClock.Instant?
        var lastCount = app.requests.count
        while ContinuousClock.now - start < within + .seconds(1) {
            let response = try await callThroughMesh(outbound, service: "api")
            XCTAssertEqual(response.status.code, 200, "request failed while an instance left: \(response.text)")
            let count = app.requests.count
            if count != lastCount {
                lastCount = count
                quietSince = nil
            } else if quietSince == nil {
                quietSince = ContinuousClock.now
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let quiet = try XCTUnwrap(quietSince, "\(app.name) still received traffic")
        XCTAssertLessThanOrEqual(quiet - start, within, "\(app.name) received traffic for longer than \(within)")
        print("\(app.name) stopped receiving traffic after \(quiet - start)")
    }
}
