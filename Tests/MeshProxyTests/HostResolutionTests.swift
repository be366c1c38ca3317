import Foundation
import MeshCore
import MeshIdentity
@testable import MeshProxy
import NIOEmbedded
import XCTest

/// How an outbound request's `Host` names its destination (`LoopState.resolve`): the service,
/// and the route in force — never a route the registry has since replaced, although the last
/// Host is remembered per loop so that a repeat is not hashed again.
final class HostResolutionTests: XCTestCase {
    func testAHostNamesItsServiceAndTheRouteInForceAfterEveryRegistryChange() throws {
        let state = LoopState(eventLoop: EmbeddedEventLoop(), limits: ProxyLimits())
        state.bundle = try TrustBundle(roots: [CertificateAuthority.create(trustDomain: "mesh.local").certificate])
        let api = try ServiceName("api")
        func instance(_ id: String, _ address: String) -> ServiceInstance {
            ServiceInstance(id: id, service: api, address: address, inboundPort: 4000, labels: Labels(),
                            lastHeartbeat: Date(), certificateExpiry: nil)
        }
        func addresses(_ route: ServiceRoute?) -> Set<String> { Set(route?.keys.map(\.address.host) ?? []) }

        var snapshot = RegistrySnapshot()
        snapshot.apply(RegistryEvent(version: 1, kind: .snapshot([instance("a", "10.0.0.1")], services: [], policies: PolicySet())))
        state.setRegistry(snapshot)
        let first = try XCTUnwrap(state.resolve(host: "api"))
        XCTAssertEqual(first.service, api)
        XCTAssertEqual(addresses(first.route), ["10.0.0.1"])
        // A port, capitals and a trailing dot name the same service; repeats get the same route.
        for host in ["api:8080", "API.", "api", "api"] {
            let resolved = try XCTUnwrap(state.resolve(host: host), host)
            XCTAssertEqual(resolved.service, api, host)
            XCTAssertTrue(resolved.route === first.route, host)
        }

        // The registry changes: the Host resolved just before must get the new route.
        snapshot.apply(RegistryEvent(version: 2, kind: .upsert(instance("b", "10.0.0.2"))))
        state.setRegistry(snapshot)
        let second = try XCTUnwrap(state.resolve(host: "api"))
        XCTAssertFalse(second.route === first.route, "a route from before the registry change")
        XCTAssertEqual(addresses(second.route), ["10.0.0.1", "10.0.0.2"])
        snapshot.apply(RegistryEvent(version: 3, kind: .remove(id: "a")))
        state.setRegistry(snapshot)
        XCTAssertEqual(addresses(state.resolve(host: "api")?.route), ["10.0.0.2"])

        // A service with no route resolves without one (the router answers it); a Host that
        // is no service name resolves to nothing, and neither disturbs the next lookup.
        let unknown = try XCTUnwrap(state.resolve(host: "db"))
        XCTAssertEqual(unknown.service, try ServiceName("db"))
        XCTAssertNil(unknown.route)
        XCTAssertNil(state.resolve(host: "not a service!"))
        XCTAssertEqual(addresses(state.resolve(host: "api")?.route), ["10.0.0.2"])
    }
}
