import Foundation
import MeshCore
import MeshTesting
import NIOConcurrencyHelpers
import XCTest

/// Non-mesh callers in permissive mode, time-bound access, and policy changes under load.
final class PolicyLifecycleTests: XCTestCase {
    private static func apply(_ yaml: String, to mesh: TestMesh, name: String = "policy-\(UUID().uuidString.prefix(6)).yaml") async throws {
        let url = mesh.directory.appendingPathComponent(name)
        try yaml.write(to: url, atomically: true, encoding: .utf8)
        let result = try await mesh.cli(["apply", "-f", url.path])
        guard result.status == 0 else { throw TestFailure("mesh apply failed: \(result.err)") }
    }

    func testPermissiveModeAdmitsPlaintextCallersOnlyThroughCIDRRules() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address, extra: ["--mtls", "permissive"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            var plain = APIClient(target: api.inbound, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
            plain.extraHeaders = [("x-mesh-peer-identity", "spiffe://mesh.local/ns/default/sa/admin")]

            // Default deny applies to non-mesh callers too.
            let denied = try await plain.get("/legacy")
            XCTAssertEqual(denied.status.code, 403, denied.text)

            // A CIDR that does not contain the caller: still denied.
            try await Self.apply("""
                kind: AuthorizationPolicy
                metadata: {name: legacy-lb}
                spec:
                  selector: {service: api}
                  rules: [{from: [{unauthenticated: true, ipBlocks: ["10.0.0.0/8"]}]}]
                """, to: mesh)
            try await Task.sleep(for: .milliseconds(300))
            let elsewhere = try await plain.get("/legacy")
            XCTAssertEqual(elsewhere.status.code, 403)

            // The loopback range admits it, as unauthenticated: no identity reaches the app.
            try await Self.apply("""
                kind: AuthorizationPolicy
                metadata: {name: legacy-lb}
                spec:
                  selector: {service: api}
                  rules: [{from: [{unauthenticated: true, ipBlocks: ["127.0.0.0/8"]}]}]
                """, to: mesh)
            let admitted = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await plain.get("/legacy")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            XCTAssertEqual(admitted.text, "hello from api\n")
            XCTAssertEqual(app.requests.last?.header("x-mesh-peer-identity"), [], "a plaintext caller forged an identity")

            // A mesh caller is not "unauthenticated": the rule does not admit web.
            let meshCaller = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(meshCaller.status.code, 403)

            // Strict mode (the default) still refuses plaintext outright.
            let strict = try await mesh.proxy("store", app: app.address)
            let strictOutcome = try await TLSProbe.plaintext(strict.inbound)
            XCTAssertEqual(strictOutcome, .closedWithoutResponse)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testTimeBoundAccessLapsesByItself() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let expires = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3))
            try await Self.apply("""
                kind: AuthorizationPolicy
                metadata: {name: oncall}
                spec:
                  selector: {service: api}
                  expires: \(expires)
                  rules: [{from: [{services: [web]}]}]
                """, to: mesh)
            _ = try await eventually(timeout: .seconds(2), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 200 else { throw TestFailure("not yet allowed: \(response.status.code)") }
                return response
            }
            // No push needed: the proxy checks the expiry itself, on open connections too.
            let lapsed = try await eventually(timeout: .seconds(6), interval: .milliseconds(100)) {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 403 else { throw TestFailure("still allowed") }
                return response
            }
            XCTAssertEqual(lapsed.status.code, 403)
            let explain = try await mesh.cli(["explain", "--from", "web", "--to", "api"])
            XCTAssertTrue(explain.out.contains("expired"), explain.out)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testPolicyChangesUnderContinuousTrafficDropNoAllowedRequest() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let allow = """
                kind: AuthorizationPolicy
                metadata: {name: web-reads}
                spec:
                  selector: {service: api}
                  rules: [{from: [{services: [web]}], to: [{methods: [GET]}]}]
                """
            try await Self.apply(allow, to: mesh)
            _ = try await eventually { () -> APIClient.Response in
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 200 else { throw TestFailure("not yet") }
                return response
            }
            let failures = NIOLockedValueBox<[String]>([])
            let count = NIOLockedValueBox(0)
            let end = ContinuousClock.now + .seconds(4)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        while ContinuousClock.now < end {
                            let response = try await callThroughMesh(web.outbound, service: "api", path: "/items")
                            count.withLockedValue { $0 += 1 }
                            if response.status.code != 200 { failures.withLockedValue { $0.append("\(response.status.code)") } }
                        }
                    }
                }
                group.addTask {
                    // Meanwhile: add a deny for another path, widen the allow, narrow it back.
                    for round in 0..<6 {
                        try await Self.apply("""
                            kind: AuthorizationPolicy
                            metadata: {name: no-admin}
                            spec:
                              action: deny
                              rules: [{to: [{paths: ["/admin/\(round)/*"]}]}]
                            """, to: mesh, name: "deny-\(round).yaml")
                        try await Self.apply(allow.replacingOccurrences(of: "[GET]", with: round % 2 == 0 ? "[GET, POST]" : "[GET]"),
                                             to: mesh, name: "allow-\(round).yaml")
                    }
                }
                try await group.waitForAll()
            }
            XCTAssertEqual(failures.withLockedValue { $0 }, [], "allowed requests were refused during policy changes")
            print("requests during 12 policy changes: \(count.withLockedValue { $0 }), 0 refused")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}

import MeshTransport
import NIOPosix
