import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import NIOHTTP1
import XCTest

/// Active health checks: each sidecar probes its own app and reports to the control plane,
/// which takes an unhealthy instance out of every caller's endpoint set until it recovers.
final class HealthCheckTests: XCTestCase {
    func testUnhealthyInstanceLeavesEveryEndpointSetAndReturns() async throws {
        let mesh = try await TestMesh.start()
        let good = try await TestApp.start("api-good")
        let sick = TestApp.Behaviour(status: .ok)
        let flaky = try await TestApp.start("api-flaky", behaviour: sick)
        do {
            let check = ["--health-check", "http:/healthz", "--health-interval", "200ms"]
            _ = try await mesh.proxy("api", app: good.address, extra: check)
            _ = try await mesh.proxy("api", app: flaky.address, extra: check)
            // An instance whose app is not listening registers unhealthy: it never gets traffic.
            _ = try await mesh.proxy("api", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--health-check", "tcp"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitForInstances(mesh, healthy: 2, unhealthy: 1)
            let listed = try await mesh.cli(["services"])
            XCTAssertTrue(listed.out.contains("app-unhealthy"), listed.out)

            // Both live instances serve while healthy.
            let before = try await send(60, through: web.outbound, apps: [good, flaky])
            XCTAssertGreaterThan(before[1], 0, "the flaky instance takes traffic while healthy: \(before)")

            // flaky's health endpoint (and everything else) now fails: after two probes its
            // proxy reports it, and no caller sends it anything more.
            sick.status = .serviceUnavailable
            try await waitForInstances(mesh, healthy: 1, unhealthy: 2)
            try await Task.sleep(for: .milliseconds(300))
            let during = try await send(100, through: web.outbound, apps: [good, flaky])
            XCTAssertEqual(during, [100, 0], "an unhealthy instance gets no requests: \(during)")
            let metrics = try await plainGet(web.admin, "/metrics").text
            XCTAssertFalse(metrics.contains("mesh_retries_total{destination_service=\"api\""),
                           "no request needed a retry: the instance was gone before any failed")

            // It recovers: one passing probe and it is back in every endpoint set.
            sick.status = .ok
            try await waitForInstances(mesh, healthy: 2, unhealthy: 1)
            try await Task.sleep(for: .milliseconds(300))
            let after = try await send(60, through: web.outbound, apps: [good, flaky])
            XCTAssertGreaterThan(after[1], 0, "the recovered instance takes traffic again: \(after)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await good.stop()
        await flaky.stop()
        await mesh.shutdown()
    }

    private func waitForInstances(_ mesh: TestMesh, healthy: Int, unhealthy: Int) async throws {
        try await waitUntil(timeout: .seconds(10)) {
            let instances = ((try? await mesh.services()) ?? []).first { $0.service.rawValue == "api" }?.instances ?? []
            return instances.filter { $0.appHealthy == true }.count == healthy
                && instances.filter { $0.appHealthy == false }.count == unhealthy
        }
    }

    /// Sends `total` GETs of `/work` two at a time; returns how many each app received
    /// (health probes not counted). Every request must succeed.
    private func send(_ total: Int, through outbound: HostPort, apps: [TestApp]) async throws -> [Int] {
        func work(_ app: TestApp) -> Int { app.requests.filter { $0.path == "/work" }.count }
        let before = apps.map(work)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<2 {
                group.addTask {
                    for _ in stride(from: worker, to: total, by: 2) {
                        let response = try await callThroughMesh(outbound, service: "api", path: "/work")
                        guard response.status == .ok else { throw TestFailure("a request failed: \(response.status) \(response.text)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        return zip(apps, before).map { work($0) - $1 }
    }
}
