import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `mesh test` and `mesh explain` use the proxies' evaluator, and say the same as the proxies.
final class PolicyToolingTests: XCTestCase {
    static let policies = """
        kind: AuthorizationPolicy
        metadata: {name: web-reads}
        spec:
          selector: {service: api}
          rules:
            - from: [{services: [web]}]
              to: [{methods: [GET, HEAD], paths: ["/v1/*"]}]
        ---
        kind: AuthorizationPolicy
        metadata: {name: batch-writes-jobs}
        spec:
          selector: {service: api}
          rules:
            - from: [{identities: ["spiffe://mesh.local/ns/default/sa/batch"]}]
              to: [{methods: [POST, DELETE], paths: ["/v1/jobs/*"]}]
        ---
        kind: AuthorizationPolicy
        metadata: {name: no-internal}
        spec:
          action: deny
          rules: [{to: [{paths: ["/v1/internal", "/v1/internal/*"]}]}]
        """

    func testMeshTestChecksAssertionsOfflineAndAgainstTheControlPlane() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        do {
            let policyFile = mesh.directory.appendingPathComponent("policies.yaml")
            try Self.policies.write(to: policyFile, atomically: true, encoding: .utf8)
            let assertions = mesh.directory.appendingPathComponent("policy.test")
            try """
                # who may call api
                web -> api GET /v1/users: allow
                web -> api GET /v1/../v1/users: allow
                web -> api DELETE /v1/users/1: deny
                batch -> api DELETE /v1/jobs/7: allow
                batch -> api GET /v1/users: deny
                web -> api GET /v1/internal/keys: deny
                unauthenticated@10.0.0.1 -> api GET /v1/users: deny
                """.write(to: assertions, atomically: true, encoding: .utf8)
            let offline = try await MeshProcess.runToEnd(["test", assertions.path, "--policies", policyFile.path])
            XCTAssertEqual(offline.status, 0, offline.out + offline.err)
            XCTAssertTrue(offline.out.contains("7 passed, 0 failed"), offline.out)

            // Against the live control plane: nothing applied yet, so the allows fail.
            let before = try await mesh.cli(["test", assertions.path])
            XCTAssertNotEqual(before.status, 0)
            XCTAssertTrue(before.out.contains("FAIL  web -> api GET /v1/users: allow"), before.out)
            XCTAssertTrue(before.out.contains("4 passed, 3 failed"), before.out)
            _ = try await mesh.cli(["apply", "-f", policyFile.path])
            let after = try await mesh.cli(["test", assertions.path])
            XCTAssertEqual(after.status, 0, after.out + after.err)

            // explain: the caller as evaluated, and the smallest change that flips a denial.
            let explain = try await mesh.cli(["explain", "--from", "batch", "--to", "api", "--method", "GET", "--path", "/v1/users",
                                              "--from-labels", "team=ops"])
            XCTAssertEqual(explain.status, 0, explain.err)
            XCTAssertTrue(explain.out.contains("caller: spiffe://mesh.local/ns/default/sa/batch  labels: team=ops"), explain.out)
            XCTAssertTrue(explain.out.contains("DENIED (denied-no-matching-allow)"), explain.out)
            XCTAssertTrue(explain.out.contains("to change it: allow it with: kind: AuthorizationPolicy"), explain.out)
            XCTAssertTrue(explain.out.contains("services: [batch]") && explain.out.contains("paths: [\"/v1/users\"]"), explain.out)
            // A plaintext caller meets api's mTLS mode (strict: no instance says otherwise)
            // before any policy; once api is permissive, the policies decide.
            let plaintext = try await mesh.cli(["explain", "--from", "unauthenticated", "--from-ip", "10.9.8.7", "--to", "api"])
            XCTAssertTrue(plaintext.out.contains("DENIED (plaintext-refused)"), plaintext.out)
            XCTAssertTrue(plaintext.out.contains("mTLS: strict (default)"), plaintext.out)
            let permissive = mesh.directory.appendingPathComponent("permissive.yaml")
            try "kind: ServiceDefaults\nmetadata: {name: api}\nspec: {mtls: permissive}\n".write(to: permissive, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", permissive.path])
            let admitted = try await mesh.cli(["explain", "--from", "unauthenticated", "--from-ip", "10.9.8.7", "--to", "api"])
            XCTAssertTrue(admitted.out.contains("DENIED (denied-no-matching-allow)"), admitted.out)
            XCTAssertTrue(admitted.out.contains("ipBlocks: [10.9.8.7/32]"), admitted.out)

            let broken = mesh.directory.appendingPathComponent("broken.test")
            try "web => api: allow\n".write(to: broken, atomically: true, encoding: .utf8)
            let parse = try await MeshProcess.runToEnd(["test", broken.path, "--policies", policyFile.path])
            XCTAssertNotEqual(parse.status, 0)
            XCTAssertTrue(parse.err.contains("broken.test:1: missing '->'"), parse.err)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testExplainAndTheProxyAgreeOnRandomizedRequests() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let callers = ["web": try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9)),
                           "batch": try await mesh.proxy("batch", app: HostPort(host: "127.0.0.1", port: 9))]
            let policyFile = mesh.directory.appendingPathComponent("policies.yaml")
            try Self.policies.write(to: policyFile, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policyFile.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            try await Task.sleep(for: .milliseconds(300))

            var generator = SystemRandomNumberGenerator()
            let methods: [HTTPMethodName] = [.get, .delete, .post, .head]
            let paths = ["/v1/users", "/v1/jobs/1", "/v1/internal/x", "/v1/internal", "/v2/users", "/v1", "/v1/jobs/../internal",
                         "//v1/users", "/v1/%6aobs/2", "/"]
            var agreed = 0
            for _ in 0..<40 {
                let callerName = ["web", "batch"].randomElement(using: &generator) ?? "web"
                let method = methods.randomElement(using: &generator) ?? .get
                let path = paths.randomElement(using: &generator) ?? "/"
                let proxy = try XCTUnwrap(callers[callerName])
                let response = try await APIClientFactory.outbound(proxy.outbound, service: "api")
                    .send(method.nio, path, json: method == .post ? "{}" : nil as String?)
                let explain = try await mesh.adminClient().send(.POST, AdminAPI.explainPath, json: AdminAPI.ExplainRequest(
                    from: callerName, to: try ServiceName("api"), method: method.rawValue, path: normalized(path)))
                    .decode(AdminAPI.ExplainResponse.self)
                let proxyAllowed = response.status.code == 200
                XCTAssertTrue(response.status.code == 200 || response.status.code == 403, "\(response.status.code) \(response.text)")
                XCTAssertEqual(proxyAllowed, explain.allowed, "\(callerName) \(method.rawValue) \(path): proxy \(response.status.code), explain \(explain.code) \(explain.explanation)")
                if proxyAllowed == explain.allowed { agreed += 1 }
            }
            print("explain and proxy agreed on \(agreed) of 40 randomized requests")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    private func normalized(_ path: String) -> String {
        // `mesh explain` normalizes like the proxy; the raw API takes the normalized path.
        var segments: [Substring] = []
        for segment in path.split(separator: "/") {
            if segment == ".." { _ = segments.popLast() } else if segment != "." { segments.append(segment) }
        }
        let joined = "/" + segments.joined(separator: "/")
        return joined.replacingOccurrences(of: "%6a", with: "j")
    }
}

/// The methods the randomized test uses, with their NIO names.
enum HTTPMethodName: String {
    case get = "GET", delete = "DELETE", post = "POST", head = "HEAD"
    var nio: NIOHTTP1.HTTPMethod {
        switch self {
        case .get: return .GET
        case .delete: return .DELETE
        case .post: return .POST
        case .head: return .HEAD
        }
    }
}

import NIOHTTP1
