import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import NIOHTTP1
import XCTest

/// Retries with a budget, and timeouts, from a TrafficPolicy, between real proxies.
final class RetryTimeoutTests: XCTestCase {
    /// A backend failing 30 % of requests with 503 becomes ≥ 99 % success for its callers;
    /// a backend failing everything gets at most the budget's share of extra requests.
    func testRetriesHideAFlakyBackendWhileTheBudgetCapsAmplification() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let flaky = try await TestApp.start("api", behaviour: TestApp.Behaviour(status: .serviceUnavailable, failureRatio: 0.3))
        let broken = try await TestApp.start("pay", behaviour: TestApp.Behaviour(status: .serviceUnavailable))
        do {
            let policy = mesh.directory.appendingPathComponent("retries.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec:
                  retries: {attempts: 5, on: ["503"], budget: {percent: 60, minPerSecond: 5}, backoff: {base: 2ms, max: 10ms}}
                ---
                kind: TrafficPolicy
                metadata: {name: pay}
                spec:
                  outlierDetection: {consecutiveFailures: 0}
                  retries: {attempts: 4, on: ["503"], budget: {percent: 20, minPerSecond: 1}, backoff: {base: 2ms, max: 10ms}}
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: flaky.address)
            _ = try await mesh.proxy("pay", app: broken.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) { ((try? await mesh.services()) ?? []).count == 3 }
            try await Task.sleep(for: .milliseconds(300))

            let requests = 400
            let ok = try await send(requests, to: "api", through: web.outbound)
            let seen = flaky.requests.count
            print("30 % failing backend: \(ok)/\(requests) succeeded, backend saw \(seen) attempts")
            XCTAssertGreaterThanOrEqual(Double(ok) / Double(requests), 0.99, "retries turn 70 % into ≥ 99 %")
            XCTAssertLessThanOrEqual(seen, Int(Double(requests) * 1.6) + 50, "within the budget: 60 % + 5/s")

            let doomed = 200
            let payOK = try await send(doomed, to: "pay", through: web.outbound)
            let payAttempts = broken.requests.count
            print("failing backend: \(payOK)/\(doomed) succeeded, backend saw \(payAttempts) attempts (no budget: \(doomed * 5))")
            XCTAssertEqual(payOK, 0, "a 503 that retries cannot fix reaches the caller")
            XCTAssertLessThanOrEqual(payAttempts, Int(Double(doomed) * 1.2) + 10 + 5, "20 % of the requests plus 1/s over 10 s")
            XCTAssertGreaterThan(payAttempts, doomed, "some retries were tried")

            let metrics = try await plainGet(web.admin, "/metrics").text
            XCTAssertTrue(metrics.contains(#"mesh_retries_total{destination_service="api",reason="status-503"}"#), metrics)
            XCTAssertTrue(metrics.contains(#"mesh_retries_total{destination_service="pay",reason="budget-exhausted"}"#), metrics)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await flaky.stop()
        await broken.stop()
        await mesh.shutdown()
    }

    /// A request timeout answers 504 with its reason; a per-try timeout moves a request off a
    /// stuck endpoint to a healthy one.
    func testRequestAndPerTryTimeouts() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let stuck = try await TestApp.start("slow", behaviour: TestApp.Behaviour(delay: .seconds(3)))
        let healthy = try await TestApp.start("quick")
        do {
            let policy = mesh.directory.appendingPathComponent("timeouts.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: slow}
                spec: {timeouts: {request: 300ms}}
                ---
                kind: TrafficPolicy
                metadata: {name: api}
                spec: {loadBalancer: round-robin, timeouts: {perTry: 250ms, request: 2s}, retries: {attempts: 1}}
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            _ = try await mesh.proxy("slow", app: stuck.address)
            _ = try await mesh.proxy("api", app: stuck.address)
            _ = try await mesh.proxy("api", app: healthy.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) {
                ((try? await mesh.services()) ?? []).first { $0.service.rawValue == "api" }?.instances.count == 2
            }
            try await Task.sleep(for: .milliseconds(300))

            let start = ContinuousClock.now
            let timedOut = try await callThroughMesh(web.outbound, service: "slow")
            let waited = ContinuousClock.now - start
            XCTAssertEqual(timedOut.status, .gatewayTimeout)
            XCTAssertEqual(timedOut.headers.first(name: "x-mesh-error"), "request-timeout")
            XCTAssertTrue(timedOut.text.contains("timeouts.request"), timedOut.text)
            XCTAssertLessThan(waited, .milliseconds(1500), "answered at the timeout, not when the app would have")

            // Round robin sends every other first try to the stuck instance: each of those
            // times out after 250 ms and is retried on the healthy one.
            for _ in 0..<6 {
                let started = ContinuousClock.now
                let response = try await callThroughMesh(web.outbound, service: "api")
                XCTAssertEqual(response.status, .ok, response.text)
                XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(1500))
            }
            XCTAssertEqual(healthy.requests.count, 6, "every request was answered by the healthy instance")
            XCTAssertGreaterThanOrEqual(stuck.requests.filter { $0.path == "/" }.count, 3, "first tries went to the stuck one too")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await stuck.stop()
        await healthy.stop()
        await mesh.shutdown()
    }

    /// Routes of a TrafficPolicy carry their own timeouts and retries: a long report path gets
    /// more time than the service's default, a payment path is never retried while the rest
    /// of the service is, and requests that match no route keep the service's settings.
    func testRoutesHaveTheirOwnTimeoutsAndRetries() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let behaviour = TestApp.Behaviour()
        let app = try await TestApp.start("api", behaviour: behaviour)
        do {
            let policy = mesh.directory.appendingPathComponent("routes.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec:
                  timeouts: {request: 400ms}
                  retries: {attempts: 2, on: ["503"], budget: {percent: 100, minPerSecond: 100}, backoff: {base: 1ms, max: 2ms}}
                  routes:
                    - match: {pathPrefix: /slow/report}
                      timeouts: {request: 5s}
                    - match: {pathPrefix: /pay}
                      retries: {attempts: 0}
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api", path: "/warm") }

            // The app answers /slow… after one second: the report route waits for it, the
            // service's 400 ms cut the others off.
            let report = try await callThroughMesh(web.outbound, service: "api", path: "/slow/report")
            XCTAssertEqual(report.status, .ok, report.text)
            let other = try await callThroughMesh(web.outbound, service: "api", path: "/slow/other")
            XCTAssertEqual(other.status, .gatewayTimeout, other.text)
            XCTAssertEqual(other.headers.first(name: "x-mesh-error"), "request-timeout")

            // Every answer is 503 now: /pay goes out once, /orders three times (1 + 2 retries).
            behaviour.status = .serviceUnavailable
            let before = app.requests.count
            let pay = try await callThroughMesh(web.outbound, service: "api", path: "/pay")
            XCTAssertEqual(pay.status, .serviceUnavailable)
            XCTAssertEqual(app.requests.count - before, 1, "the /pay route is never retried")
            let orders = try await callThroughMesh(web.outbound, service: "api", path: "/orders")
            XCTAssertEqual(orders.status, .serviceUnavailable)
            XCTAssertEqual(app.requests.count - before, 4, "the rest of the service is retried twice")

            // A route must do something, and the budget and idle timeout stay the service's.
            let bad = mesh.directory.appendingPathComponent("bad.yaml")
            for (spec, complaint) in [("{match: {pathPrefix: /x}}", "spec.routes[0]' must route somewhere"),
                                      ("{match: {pathPrefix: /x}, retries: {budget: {percent: 5}}}", "spec.routes[0].retries.budget"),
                                      ("{match: {pathPrefix: /x}, timeouts: {idle: 5m}}", "spec.routes[0].timeouts.idle")] {
                try "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {routes: [\(spec)]}\n".write(to: bad, atomically: true, encoding: .utf8)
                let refused = try await mesh.cli(["apply", "-f", bad.path])
                XCTAssertNotEqual(refused.status, 0)
                XCTAssertTrue(refused.err.contains(complaint), refused.err)
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// Sends `count` GETs to `service`, four at a time; returns how many got 200.
    private func send(_ count: Int, to service: String, through outbound: HostPort) async throws -> Int {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var ok = 0
                    for _ in stride(from: worker, to: count, by: 4) where try await callThroughMesh(outbound, service: service).status == .ok {
                        ok += 1
                    }
                    return ok
                }
            }
            return try await group.reduce(0, +)
        }
    }
}
