import MeshCore
import MeshPolicy
import XCTest

/// `TrafficPolicy` resources: refused whole with the field named, defaults filled in.
final class TrafficPolicyTests: XCTestCase {
    private func policy(_ spec: TrafficPolicy.Spec, name: String = "api") -> MeshResource {
        .trafficPolicy(TrafficPolicy(service: name, spec: spec))
    }

    func testInvalidFieldsAreNamed() {
        let cases: [(MeshResource, String)] = [
            (policy(.init(loadBalancer: "random")), "spec.loadBalancer"),
            (policy(.init(outlierDetection: .init(consecutiveFailures: -1))), "spec.outlierDetection.consecutiveFailures"),
            (policy(.init(outlierDetection: .init(baseEjection: "soon"))), "spec.outlierDetection.baseEjection"),
            (policy(.init(outlierDetection: .init(baseEjection: "2h"))), "spec.outlierDetection.baseEjection"),
            (policy(.init(outlierDetection: .init(maxEjectedPercent: 101))), "spec.outlierDetection.maxEjectedPercent"),
            (policy(.init(), name: "Not_A_Service"), "metadata.name"),
            (policy(.init(timeouts: .init(request: "0s"))), "spec.timeouts.request"),
            (policy(.init(timeouts: .init(perTry: "fast"))), "spec.timeouts.perTry"),
            (policy(.init(timeouts: .init(idle: "500ms"))), "spec.timeouts.idle"),
            (policy(.init(retries: .init(attempts: 11))), "spec.retries.attempts"),
            (policy(.init(retries: .init(on: ["404"]))), "spec.retries.on"),
            (policy(.init(retries: .init(on: ["gateway-error"]))), "spec.retries.on"),
            (policy(.init(retries: .init(budget: .init(percent: -1)))), "spec.retries.budget.percent"),
            (policy(.init(retries: .init(backoff: .init(max: "2m")))), "spec.retries.backoff.max"),
            (policy(.init(rateLimits: [.init(requestsPerSecond: 0)])), "spec.rateLimits[0].requestsPerSecond"),
            (policy(.init(rateLimits: [.init(requestsPerSecond: 5), .init(requestsPerSecond: 1, by: "ip")])), "spec.rateLimits[1].by"),
            (policy(.init(rateLimits: [.init(pathPrefix: "checkout", requestsPerSecond: 1)])), "spec.rateLimits[0].pathPrefix"),
            (policy(.init(fault: .init(delay: .init(percent: 120, duration: "1s")))), "spec.fault.delay.percent"),
            (policy(.init(fault: .init(abort: .init(percent: 10, status: 99)))), "spec.fault.abort.status"),
            (policy(.init(circuitBreaker: .init(maxRequests: 0))), "spec.circuitBreaker.maxRequests"),
            (policy(.init(routes: [.init(match: .init(), to: ["version": "v2"])])), "spec.routes[0].match"),
            (policy(.init(routes: [.init(match: .init(pathPrefix: "/x"), to: [:])])), "spec.routes[0].to"),
            (policy(.init(split: [.init(labels: ["version": "v1"], weight: 0)])), "spec.split"),
            (policy(.init(split: [.init(labels: [:], weight: 10)])), "spec.split[0].labels"),
        ]
        for (resource, field) in cases {
            XCTAssertThrowsError(try ResourceValidator.validate(resource), field) { error in
                XCTAssertTrue("\(error)".contains("TrafficPolicy") && "\(error)".contains(field), "\(error)")
            }
        }
        XCTAssertNoThrow(try ResourceValidator.validate(policy(.init(loadBalancer: "least-request",
                                                                      outlierDetection: .init(consecutiveFailures: 0)))))
    }

    func testDefaultsAndDecoding() throws {
        let defaults = PolicySet().traffic(for: try ServiceName("api"))
        XCTAssertEqual(defaults.balancer, .p2cEWMA)
        XCTAssertEqual(defaults.consecutiveFailures, 5)
        XCTAssertEqual(defaults.baseEjectionSeconds, 30)
        XCTAssertEqual(defaults.maxEjectedPercent, 50)
        XCTAssertEqual(defaults.requestTimeoutSeconds, 0, "no timeout unless set")
        XCTAssertEqual(defaults.idleTimeoutSeconds, 0, "the proxy's own idle timeout unless set")
        XCTAssertEqual(defaults.retryAttempts, 2)
        XCTAssertTrue(defaults.retryOnConnectFailure && defaults.retryOnReset)
        XCTAssertEqual(defaults.retryStatuses, [], "a 5xx is retried only when asked")
        XCTAssertFalse(defaults.retryNonIdempotent)
        XCTAssertEqual(defaults.budgetPercent, 20)
        XCTAssertEqual(defaults.budgetMinPerSecond, 10)

        let retrying = TrafficPolicy(service: "api", spec: .init(timeouts: .init(request: "1s", perTry: "250ms", idle: "10m"),
                                                                 retries: .init(attempts: 3, on: ["503", "reset"])))
        let effectiveRetries = retrying.effective
        XCTAssertEqual(effectiveRetries.requestTimeoutSeconds, 1)
        XCTAssertEqual(effectiveRetries.perTryTimeoutSeconds, 0.25)
        XCTAssertEqual(effectiveRetries.idleTimeoutSeconds, 600)
        XCTAssertEqual(effectiveRetries.retryAttempts, 3)
        XCTAssertEqual(effectiveRetries.retryStatuses, [503])
        XCTAssertTrue(effectiveRetries.retryOnReset)
        XCTAssertFalse(effectiveRetries.retryOnConnectFailure, "a list given replaces the default conditions")

        // A route's own settings replace only what it sets; routes without any have none.
        var routed = retrying
        routed.spec.routes = [.init(match: .init(pathPrefix: "/a"), to: ["version": "v2"]),
                              .init(match: .init(pathPrefix: "/reports"), timeouts: .init(request: "30s"), retries: .init(attempts: 0))]
        let routeSettings = routed.effective.routeSettings
        XCTAssertEqual(routeSettings.count, 2)
        XCTAssertNil(routeSettings[0])
        let reports = try XCTUnwrap(routeSettings[1])
        XCTAssertEqual(reports.requestTimeoutSeconds, 30)
        XCTAssertEqual(reports.perTryTimeoutSeconds, 0.25, "the service's per-try timeout still applies")
        XCTAssertEqual(reports.retryAttempts, 0)
        XCTAssertEqual(reports.retryStatuses, [503], "the service's conditions still apply")

        let json = #"{"kind":"TrafficPolicy","metadata":{"name":"api"},"spec":{"loadBalancer":"round-robin","outlierDetection":{"baseEjection":"2s"}}}"#
        let resource = try JSONDecoder().decode(MeshResource.self, from: Data(json.utf8))
        let set = PolicySet(defaultMode: "deny", resources: [resource])
        let effective = set.traffic(for: try ServiceName("api"))
        XCTAssertEqual(effective.balancer, .roundRobin)
        XCTAssertEqual(effective.baseEjectionSeconds, 2)
        XCTAssertEqual(effective.consecutiveFailures, 5, "what the policy leaves out keeps its default")
        XCTAssertEqual(set.resources, [resource])
        XCTAssertEqual(try JSONDecoder().decode(PolicySet.self, from: JSONEncoder().encode(set)), set)
    }
}
