import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import NIOHTTP1
import XCTest

/// Local rate limits (the destination's proxy answers 429) and fault injection (the callers'
/// proxies delay or abort), from TrafficPolicy resources, between real proxies.
final class RateLimitFaultTests: XCTestCase {
    func testRateLimitsPerCallerAndPerPath() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api")
        do {
            let policy = mesh.directory.appendingPathComponent("limits.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec:
                  rateLimits:
                    - {pathPrefix: /checkout, requestsPerSecond: 1, burst: 2, by: all}
                    - {requestsPerSecond: 0.5, burst: 5}
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let mobile = try await mesh.proxy("mobile", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) { ((try? await mesh.services()) ?? []).count == 3 }
            try await Task.sleep(for: .milliseconds(300))

            // Each caller has its own bucket of 5 (refilling at one per 2 s): a quick burst of 10
            // gets 5 or 6 through, the rest 429 with Retry-After.
            var webStatuses: [HTTPResponseStatus] = []
            for _ in 0..<10 { webStatuses.append(try await callThroughMesh(web.outbound, service: "api", path: "/items").status) }
            let webOK = webStatuses.filter { $0 == .ok }.count
            XCTAssertTrue((5...6).contains(webOK), "\(webStatuses)")
            let limited = try await callThroughMesh(web.outbound, service: "api", path: "/items")
            XCTAssertEqual(limited.status, .tooManyRequests)
            XCTAssertEqual(limited.headers.first(name: "x-mesh-error"), "rate-limited")
            XCTAssertEqual(limited.headers.first(name: "retry-after"), "1")
            XCTAssertTrue(limited.text.contains("from web"), limited.text)
            let mobileOK = try await callThroughMesh(mobile.outbound, service: "api", path: "/items").status
            XCTAssertEqual(mobileOK, .ok, "another caller has its own allowance")

            // /checkout shares one bucket of 2 among all callers.
            let first = try await callThroughMesh(mobile.outbound, service: "api", path: "/checkout").status
            let second = try await callThroughMesh(web.outbound, service: "api", path: "/checkout").status
            let third = try await callThroughMesh(mobile.outbound, service: "api", path: "/checkout").status
            XCTAssertEqual([first, second, third], [.ok, .ok, .tooManyRequests])

            // The allowance refills.
            try await Task.sleep(for: .seconds(2.2))
            let refilled = try await callThroughMesh(web.outbound, service: "api", path: "/items").status
            XCTAssertEqual(refilled, .ok)
            XCTAssertEqual(app.requests.filter { $0.path == "/checkout" }.count, 2, "a limited request never reaches the app")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testFaultInjectionDelaysAndAborts() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api")
        let slowApp = try await TestApp.start("store")
        do {
            let policy = mesh.directory.appendingPathComponent("fault.yaml")
            try """
                kind: TrafficPolicy
                metadata: {name: api}
                spec: {fault: {abort: {percent: 50, status: 503}}, retries: {attempts: 0}}
                ---
                kind: TrafficPolicy
                metadata: {name: store}
                spec: {fault: {delay: {percent: 100, duration: 300ms}}}
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            _ = try await mesh.proxy("api", app: app.address)
            _ = try await mesh.proxy("store", app: slowApp.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) { ((try? await mesh.services()) ?? []).count == 3 }
            try await Task.sleep(for: .milliseconds(300))

            var aborted = 0
            for _ in 0..<200 {
                let response = try await callThroughMesh(web.outbound, service: "api")
                if response.status == .serviceUnavailable {
                    XCTAssertEqual(response.headers.first(name: "x-mesh-error"), "fault-injected")
                    aborted += 1
                } else {
                    XCTAssertEqual(response.status, .ok)
                }
            }
            print("fault abort 50 %: \(aborted)/200 aborted")
            XCTAssertTrue((70...130).contains(aborted), "about half: \(aborted)")
            XCTAssertEqual(app.requests.count, 200 - aborted, "aborted requests never leave the caller's proxy")

            let start = ContinuousClock.now
            let delayed = try await callThroughMesh(web.outbound, service: "store")
            XCTAssertEqual(delayed.status, .ok)
            XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(300), "the injected delay")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await slowApp.stop()
        await mesh.shutdown()
    }
}

/// Circuit breaking in the caller's proxy: beyond `maxRequests` in flight to every endpoint,
/// a request fails at once with 503 `overloaded` instead of queueing behind a slow service.
final class CircuitBreakerTests: XCTestCase {
    func testRequestsBeyondMaxRequestsFailFast() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api", behaviour: TestApp.Behaviour(delay: .milliseconds(800)))
        do {
            let policy = mesh.directory.appendingPathComponent("breaker.yaml")
            try "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {circuitBreaker: {maxRequests: 2}, retries: {attempts: 0}}\n"
                .write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitUntil(timeout: .seconds(10)) { ((try? await mesh.services()) ?? []).count == 2 }
            try await Task.sleep(for: .milliseconds(300))

            let results = try await withThrowingTaskGroup(of: (HTTPResponseStatus, String?, Duration).self) { group in
                for _ in 0..<6 {
                    group.addTask {
                        let start = ContinuousClock.now
                        let response = try await callThroughMesh(web.outbound, service: "api")
                        return (response.status, response.headers.first(name: "x-mesh-error"), ContinuousClock.now - start)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let ok = results.filter { $0.0 == .ok }
            let refused = results.filter { $0.0 == .serviceUnavailable && $0.1 == "overloaded" }
            XCTAssertEqual(ok.count, 2, "\(results)")
            XCTAssertEqual(refused.count, 4, "\(results)")
            XCTAssertTrue(refused.allSatisfy { $0.2 < .milliseconds(500) }, "refused at once, not after the slow answers: \(results)")
            XCTAssertEqual(app.requests.count, 2)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
