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
