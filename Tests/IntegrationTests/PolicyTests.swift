import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Zero trust end to end: default deny, policies applied centrally and enforced by the
/// receiving proxy within a second, 403s that say which decision and how to find it in logs.
final class PolicyTests: XCTestCase {
    private func write(_ text: String, in mesh: TestMesh, _ name: String) throws -> String {
        let url = mesh.directory.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func testDefaultDenyThenAllowDenyAuditAndDeleteTakeEffectWithinOneSecond() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address, labels: ["app=api", "env=prod"])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), labels: ["team=shop"])

            // Default deny: 403, a decision code and a correlation id; the app never sees it.
            let denied = try await callThroughMesh(web.outbound, service: "api", path: "/orders/1")
            XCTAssertEqual(denied.status.code, 403, denied.text)
            XCTAssertTrue(denied.text.contains("access denied by policy (request id"), denied.text)
            XCTAssertTrue(app.requests.isEmpty)
            try await waitUntil { api.process.log.contains("request denied by policy") }
            // The 403 carries only an id; `mesh explain --request-id` finds the whole story.
            let requestID = try XCTUnwrap(denied.text.split(separator: " ").last?.replacingOccurrences(of: ")\n", with: ""))
            let past = try await eventually(timeout: .seconds(5), interval: .milliseconds(100)) { () -> String in
                let result = try await mesh.cli(["explain", "--request-id", requestID])
                guard result.status == 0 else { throw TestFailure(result.err) }
                return result.out
            }
            XCTAssertTrue(past.contains("spiffe://mesh.local/ns/default/sa/web") && past.contains("-> api GET /orders/1"), past)
            XCTAssertTrue(past.contains("DENIED (denied-no-matching-allow)"), past)
            let unknownID = try await mesh.cli(["explain", "--request-id", "0000000000000000"])
            XCTAssertNotEqual(unknownID.status, 0)
            XCTAssertTrue(unknownID.err.contains("no denial with request id"), unknownID.err)
            XCTAssertTrue(api.process.log.contains("code=denied-no-matching-allow"), api.process.log.suffix(2000).description)

            // Allow GETs under /orders from web (by identity and caller labels).
            let allow = try write("""
                kind: AuthorizationPolicy
                metadata:
                  name: web-reads-orders
                spec:
                  selector:
                    labels: "app=api, env in (prod,staging)"
                  action: allow
                  rules:
                    - from:
                        - identities: ["spiffe://mesh.local/ns/default/sa/web"]
                          labels: "team=shop"
                      to:
                        - methods: [GET]
                          paths: ["/orders/*"]
                ---
                kind: AuthorizationPolicy
                metadata:
                  name: no-admin
                spec:
                  action: deny
                  rules:
                    - to:
                        - paths: ["/orders/admin"]
                """, in: mesh, "allow.yaml")
            let applied = try await mesh.cli(["apply", "-f", allow])
            XCTAssertEqual(applied.status, 0, applied.err)
            XCTAssertTrue(applied.out.contains("authorizationpolicy/web-reads-orders created"), applied.out)
            let start = ContinuousClock.now
            let allowed = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api", path: "/orders/1")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            let propagation = ContinuousClock.now - start
            XCTAssertLessThan(propagation, .seconds(1), "policy took \(propagation) to take effect")
            print("policy in force after \(propagation)")
            XCTAssertEqual(allowed.text, "hello from api\n")

            // Normalized before it is authorized, and forwarded normalized.
            let dotted = try await callThroughMesh(web.outbound, service: "api", path: "/x/../orders//2")
            XCTAssertEqual(dotted.status.code, 200)
            XCTAssertEqual(app.requests.last?.path, "/orders/2")
            let encoded = try await callThroughMesh(web.outbound, service: "api", path: "/orders%2F..%2Fadmin")
            XCTAssertEqual(encoded.status.code, 400, encoded.text)

            // Not covered by the allow rule, and deny wins over allow.
            let post = try await APIClientFactory.outbound(web.outbound, service: "api").send(.POST, "/orders/1", json: "{}")
            XCTAssertEqual(post.status.code, 403)
            let admin = try await callThroughMesh(web.outbound, service: "api", path: "/orders/admin")
            XCTAssertEqual(admin.status.code, 403)

            // `mesh explain` says which policy decides, and why.
            let explain = try await mesh.cli(["explain", "--from", "web", "--to", "api", "--method", "GET", "--path", "/orders/admin"])
            XCTAssertEqual(explain.status, 0, explain.err)
            XCTAssertTrue(explain.out.contains("DENIED (denied-by-policy) by policy no-admin"), explain.out)
            let explainOK = try await mesh.cli(["explain", "--from", "web", "--to", "api", "--method", "GET", "--path", "/orders/7"])
            XCTAssertTrue(explainOK.out.contains("ALLOWED (allowed-by-policy) by policy web-reads-orders"), explainOK.out)

            // Audit mode: the deny is recorded, the request passes.
            let audit = try write("""
                kind: AuthorizationPolicy
                metadata: {name: no-admin}
                spec:
                  action: deny
                  mode: audit
                  rules: [{to: [{paths: ["/orders/admin"]}]}]
                """, in: mesh, "audit.yaml")
            _ = try await mesh.cli(["apply", "-f", audit])
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api", path: "/orders/admin")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            try await waitUntil { api.process.log.contains("would_deny=no-admin") }

            // Delete: back to default deny. History shows who did what.
            let deleted = try await mesh.cli(["delete", "policy", "web-reads-orders"])
            XCTAssertEqual(deleted.status, 0, deleted.err)
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api", path: "/orders/1")
                guard response.status.code == 403 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            // Every decision is counted by policy, action and code on the proxy's /metrics.
            let metrics = try await plainGet(api.admin, "/metrics").text
            for series in [#"mesh_policy_decisions_total{policy="none",action="deny",code="denied-no-matching-allow"}"#,
                           #"mesh_policy_decisions_total{policy="web-reads-orders",action="allow",code="allowed-by-policy"}"#,
                           #"mesh_policy_decisions_total{policy="no-admin",action="deny",code="denied-by-policy"}"#,
                           #"mesh_policy_decisions_total{policy="no-admin",action="audit-deny",code="would-deny"}"#,
                           #"mesh_requests_total{direction="inbound",source_service="web",source_identity="spiffe://mesh.local/ns/default/sa/web",destination_service="api",destination_identity="spiffe://mesh.local/ns/default/sa/api",status_code="403",tls="true"}"#,
                           #"mesh_requests_total{direction="inbound",source_service="web",source_identity="spiffe://mesh.local/ns/default/sa/web",destination_service="api",destination_identity="spiffe://mesh.local/ns/default/sa/api",status_code="200",tls="true"}"#] {
                XCTAssertTrue(metrics.contains(series), "\(series) missing in:\n\(metrics)")
            }
            let history = try await mesh.cli(["history"])
            for line in ["created  authorizationpolicy/web-reads-orders", "updated  authorizationpolicy/no-admin",
                         "deleted  authorizationpolicy/web-reads-orders"] {
                XCTAssertTrue(history.out.contains(line), "\(line) missing:\n\(history.out)")
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testInvalidResourcesAreRefusedWholeWithFileLineAndField() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        do {
            let good = """
                kind: AuthorizationPolicy
                metadata: {name: fine}
                spec:
                  rules: [{from: [{services: [web]}]}]
                """
            let cases: [(String, String)] = [
                (good + "\n---\n" + """
                kind: AuthorizationPolicy
                metadata: {name: broken}
                spec:
                  rules:
                    - to:
                        - paths: ["orders"]
                """, "bad-path.yaml:11: AuthorizationPolicy 'broken': field 'spec.rules[0].to[0].paths'"),
                ("""
                kind: AuthorizationPolicy
                metadata: {name: broken}
                spec:
                  action: maybe
                  rules: [{}]
                """, "field 'spec.action' must be allow or deny"),
                ("""
                kind: AuthorizationPolicy
                metadata: {name: broken}
                spec:
                  selector: {labels: "env in prod"}
                  rules: [{}]
                """, "field 'spec.selector.labels'"),
                ("""
                kind: AuthorizationPolicy
                metadata: {name: broken}
                spec: {rules: [{from: [{ipBlocks: ["10.0.0.0/40"]}]}]}
                """, "field 'spec.rules[0].from[0].ipBlocks'"),
                ("""
                kind: AuthorizationPolicy
                spec: {rules: [{}]}
                """, "field 'metadata' is missing"),
            ]
            for (index, (text, expected)) in cases.enumerated() {
                let name = index == 0 ? "bad-path.yaml" : "bad-\(index).yaml"
                let result = try await mesh.cli(["apply", "-f", try write(text, in: mesh, name)])
                XCTAssertNotEqual(result.status, 0)
                XCTAssertTrue(result.err.contains(expected), "expected '\(expected)' in:\n\(result.err)")
            }
            // Nothing was stored: not even the valid document that came with an invalid one.
            let listed = try await mesh.cli(["get", "policies", "-o", "json"])
            XCTAssertEqual(listed.status, 0, listed.err)
            XCTAssertEqual(listed.out.trimmingCharacters(in: .whitespacesAndNewlines), "[]")
            // The server checks too: a client that skips validation is refused whole.
            let raw = try await mesh.adminClient().send(.POST, AdminAPI.resourcesPath, json: [
                PolicyDocument(name: "ok", spec: .init(rules: [.init()])),
                PolicyDocument(name: "Bad Name", spec: .init(rules: [.init()])),
            ])
            XCTAssertEqual(raw.status.code, 400, raw.text)
            let after = try await mesh.adminClient().get(AdminAPI.policiesPath).decode(PolicySet.self)
            XCTAssertTrue(after.policies.isEmpty)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }
}
