import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `--access-log`: one JSON line per request on each proxy, with the trace id, identities,
/// normalized path, status, hop durations, bytes and the policy decision.
final class AccessLogIntegrationTests: XCTestCase {
    func testBothProxiesLogEachRequestWithIdentitiesHopsAndDecision() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            let apiLog = mesh.directory.appendingPathComponent("api-access.log")
            let webLog = mesh.directory.appendingPathComponent("web-access.log")
            _ = try await mesh.proxy("api", app: app.address, extra: ["--access-log", apiLog.path])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--access-log", webLog.path])
            let policy = mesh.directory.appendingPathComponent("policy.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-reads}
                spec:
                  selector: {service: api}
                  rules: [{from: [{services: [web]}], to: [{methods: [GET], paths: ["/v1/*"]}]}]
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            var client = APIClientFactory.outbound(web.outbound, service: "api")
            client.extraHeaders = [("traceparent", "00-\(traceID)-00f067aa0ba902b7-01")]
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await client.get("/v1/users/../orders?token=secret")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            client.extraHeaders = []
            let denied = try await client.send(.DELETE, "/v1/orders", json: Optional<String>.none)
            XCTAssertEqual(denied.status.code, 403)

            let inbound = try await Self.lines(apiLog) { $0.contains { $0["method"] as? String == "DELETE" } }
            let allowed = try XCTUnwrap(inbound.last { $0["status"] as? Int == 200 })
            XCTAssertEqual(allowed["trace_id"] as? String, traceID)
            XCTAssertEqual(allowed["direction"] as? String, "inbound")
            XCTAssertEqual(allowed["source_identity"] as? String, "spiffe://mesh.local/ns/default/sa/web")
            XCTAssertEqual(allowed["destination_service"] as? String, "api")
            XCTAssertEqual(allowed["path"] as? String, "/v1/orders", "the normalized path, without the query")
            XCTAssertEqual(allowed["decision"] as? String, "allowed-by-policy")
            XCTAssertEqual(allowed["policy"] as? String, "web-reads")
            XCTAssertEqual(allowed["tls"] as? Bool, true)
            XCTAssertEqual(Set(((allowed["hops_ms"] as? [String: Any]) ?? [:]).keys), ["proxy", "app"])
            XCTAssertGreaterThan(allowed["response_bytes"] as? Int ?? 0, 0)
            let refused = try XCTUnwrap(inbound.last { $0["method"] as? String == "DELETE" })
            XCTAssertEqual(refused["status"] as? Int, 403)
            XCTAssertEqual(refused["decision"] as? String, "denied-no-matching-allow")
            XCTAssertTrue(refused["policy"] is NSNull)
            XCTAssertEqual(refused["request_id"] as? String, denied.headers.first(name: "x-mesh-request-id"))
            XCTAssertFalse(try String(contentsOf: apiLog, encoding: .utf8).contains("secret"), "queries are never logged")

            let outbound = try await Self.lines(webLog) { $0.contains { $0["method"] as? String == "DELETE" } }
            let call = try XCTUnwrap(outbound.last { $0["status"] as? Int == 200 })
            XCTAssertEqual(call["direction"] as? String, "outbound")
            XCTAssertEqual(call["source_service"] as? String, "web")
            XCTAssertEqual(call["destination_identity"] as? String, "spiffe://mesh.local/ns/default/sa/api")
            XCTAssertEqual(call["trace_id"] as? String, traceID)
            XCTAssertEqual(Set(((call["hops_ms"] as? [String: Any]) ?? [:]).keys), ["caller_proxy", "network", "peer_proxy", "app"])
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testAnUnwritableAccessLogStopsTheProxyWithAClearError() async throws {
        let mesh = try await TestMesh.start()
        do {
            let token = try await mesh.token(for: "api")
            let result = try await MeshProcess.runToEnd([
                "proxy", "--service", "api", "--app", "127.0.0.1:9", "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--control", mesh.listen.description, "--ca-file", mesh.caFile.path, "--token", token,
                "--access-log", "/nonexistent-dir/access.log"])
            XCTAssertNotEqual(result.status, 0)
            XCTAssertTrue(result.err.contains("cannot open the access log /nonexistent-dir/access.log"), result.err)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    /// The log's lines as JSON objects, once `ready` holds (the writer flushes every 50 ms).
    private static func lines(_ file: URL, until ready: @escaping ([[String: Any]]) -> Bool) async throws -> [[String: Any]] {
        try await eventually(timeout: .seconds(5), interval: .milliseconds(50)) {
            let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
            let objects = try text.split(separator: "\n").map { line -> [String: Any] in
                guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    throw TestFailure("not a JSON object: \(line)")
                }
                return object
            }
            guard ready(objects) else { throw TestFailure("not logged yet:\n\(text)") }
            return objects
        }
    }
}
