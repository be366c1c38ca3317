import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import NIOHTTP1
import XCTest

/// Load balancing and passive health between real proxies: P2C over peak-EWMA latency by
/// default, round robin when a TrafficPolicy says so, and outlier ejection of a failing
/// endpoint that returns once it recovers.
final class BalancingTests: XCTestCase {
    /// Two instances of api, one 40 ms slower: the slow one loses most traffic under the
    /// default balancer, and gets half of it with `loadBalancer: round-robin`.
    func testSlowEndpointLosesTrafficUnderP2CEWMAAndRoundRobinSplitsEvenly() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let fast = try await TestApp.start("api-fast")
        let slow = try await TestApp.start("api-slow", behaviour: TestApp.Behaviour(delay: .milliseconds(40)))
        do {
            _ = try await mesh.proxy("api", app: fast.address)
            _ = try await mesh.proxy("api", app: slow.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitForEndpoints(mesh, service: "api", count: 2)

            let p2c = try await sendConcurrently(300, through: web.outbound, apps: [fast, slow])
            let slowShare = Double(p2c[1]) / Double(p2c[0] + p2c[1])
            print("p2c-ewma: fast \(p2c[0]), slow \(p2c[1]) (slow share \(String(format: "%.1f", slowShare * 100)) %)")
            XCTAssertLessThan(slowShare, 0.2, "the 40 ms endpoint gets under a fifth of the requests: \(p2c)")
            XCTAssertGreaterThan(p2c[1], 0, "it is still tried (two random choices, estimates decay)")

            let policy = mesh.directory.appendingPathComponent("rr.yaml")
            try "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {loadBalancer: round-robin}\n".write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            XCTAssertTrue(applied.out.contains("trafficpolicy/api created"), applied.out)
            let shown = try await mesh.cli(["get", "tp"])
            XCTAssertTrue(shown.out.contains("api      round-robin"), shown.out)
            try await Task.sleep(for: .milliseconds(500))

            let even = try await sendConcurrently(100, through: web.outbound, apps: [fast, slow], concurrency: 1)
            print("round-robin: fast \(even[0]), slow \(even[1])")
            XCTAssertEqual(even[0], 50, "round robin alternates: \(even)")
            XCTAssertEqual(even[1], 50, "round robin alternates: \(even)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await fast.stop()
        await slow.stop()
        await mesh.shutdown()
    }

    /// An endpoint answering 500 is ejected after three failures in a row, gets nothing while
    /// ejected, and is back after the ejection once it recovers. (Round robin, so that the
    /// failing endpoint is sure to be chosen: P2C would mostly avoid it by latency alone.)
    func testFailingEndpointIsEjectedAndReturns() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let good = try await TestApp.start("api-good")
        let badBehaviour = TestApp.Behaviour(status: .internalServerError)
        let bad = try await TestApp.start("api-bad", behaviour: badBehaviour)
        do {
            let policy = mesh.directory.appendingPathComponent("outlier.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec: {loadBalancer: round-robin, outlierDetection: {consecutiveFailures: 3, baseEjection: 3s, maxEjectedPercent: 50}}
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            _ = try await mesh.proxy("api", app: good.address)
            _ = try await mesh.proxy("api", app: bad.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitForEndpoints(mesh, service: "api", count: 2)

            var failures = 0
            for _ in 0..<40 {
                if try await callThroughMesh(web.outbound, service: "api").status != .ok { failures += 1 }
            }
            XCTAssertEqual(failures, 3, "three failures in a row eject the endpoint; no request goes there after")
            XCTAssertEqual(bad.requests.count, 3)
            let webProxy = try XCTUnwrap(mesh.proxies.last)
            XCTAssertTrue(webProxy.log.contains("endpoint ejected after failures in a row"), webProxy.log.suffix(2000).description)

            // Recovered: once the ejection (3 s) is over, it gets traffic again.
            badBehaviour.status = .ok
            try await Task.sleep(for: .seconds(3.2))
            for _ in 0..<40 {
                let status = try await callThroughMesh(web.outbound, service: "api").status
                XCTAssertEqual(status, .ok)
            }
            XCTAssertGreaterThanOrEqual(bad.requests.count, 3 + 15, "the recovered endpoint is back in the rotation")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await good.stop()
        await bad.stop()
        await mesh.shutdown()
    }

    /// A 90/10 canary split by instance labels, measured over 2000 requests, and a header
    /// route that sends chosen requests to the canary only.
    func testWeightedSplitAndHeaderRouteToACanary() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let stable = try await TestApp.start("api-v1")
        let canary = try await TestApp.start("api-v2")
        do {
            let policy = mesh.directory.appendingPathComponent("canary.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec:
                  routes: [{match: {headers: {X-Canary: "1"}}, to: {version: v2}}]
                  split: [{labels: {version: v1}, weight: 90}, {labels: {version: v2}, weight: 10}]
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: stable.address, labels: ["version=v1"])
            _ = try await mesh.proxy("api", app: canary.address, labels: ["version=v2"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitForEndpoints(mesh, service: "api", count: 2)

            let counts = try await sendConcurrently(2000, through: web.outbound, apps: [stable, canary])
            let share = Double(counts[1]) / 2000
            print("split 90/10 over 2000: v1 \(counts[0]), v2 \(counts[1]) (\(String(format: "%.1f", share * 100)) %)")
            XCTAssertEqual(counts[0] + counts[1], 2000)
            XCTAssertEqual(share, 0.10, accuracy: 0.03, "the canary gets 10 % ± 3 %")

            var client = APIClientFactory.outbound(web.outbound, service: "api")
            client.extraHeaders = [("x-canary", "1")]
            let before = canary.requests.count
            for _ in 0..<20 {
                let status = try await client.get("/").status
                XCTAssertEqual(status, .ok)
            }
            XCTAssertEqual(canary.requests.count - before, 20, "the header route sends every matching request to v2")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await stable.stop()
        await canary.stop()
        await mesh.shutdown()
    }

    private func waitForEndpoints(_ mesh: TestMesh, service: String, count: Int) async throws {
        try await waitUntil(timeout: .seconds(10)) {
            ((try? await mesh.services()) ?? []).first { $0.service.rawValue == service }?.instances.count == count
        }
        // The registry push reaches the callers' proxies within milliseconds.
        try await Task.sleep(for: .milliseconds(300))
    }

    /// Sends `total` GETs through `outbound`, `concurrency` at a time; returns how many each
    /// app received.
    private func sendConcurrently(_ total: Int, through outbound: HostPort, apps: [TestApp], concurrency: Int = 4) async throws -> [Int] {
        let before = apps.map(\.requests.count)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    for _ in stride(from: worker, to: total, by: concurrency) {
                        let status = try await callThroughMesh(outbound, service: "api").status
                        guard status == .ok else { throw TestFailure("a request failed with \(status)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        return zip(apps, before).map { $0.requests.count - $1 }
    }
}
