import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import XCTest

/// `mesh stat` and `mesh edges` from the proxies' traffic reports.
final class TrafficStatsTests: XCTestCase {
    func testStatAndEdgesShowRatesSuccessLatencyDenialsAndHops() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let policy = mesh.directory.appendingPathComponent("policy.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-to-api}
                spec: {selector: {service: api}, rules: [{from: [{services: [web]}]}]}
                ---
                kind: AuthorizationPolicy
                metadata: {name: no-admin}
                spec: {selector: {service: api}, action: deny, rules: [{to: [{paths: ["/admin"]}]}]}
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            // Policies are in force within milliseconds; a second also lets each proxy send its
            // first (zero) traffic report, so that every request below is counted.
            try await Task.sleep(for: .seconds(1))
            for _ in 0..<20 {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                XCTAssertEqual(status, 200)
            }
            for _ in 0..<5 {
                let status = try await callThroughMesh(web.outbound, service: "api", path: "/admin").status.code
                XCTAssertEqual(status, 403)
            }

            // Reports arrive every heartbeat interval (500 ms here); wait for the denials.
            let stat = try await eventually(timeout: .seconds(10), interval: .milliseconds(250)) { () -> ServiceStat in
                let result = try await mesh.cli(["stat", "api", "--window", "30s", "-o", "json"])
                let rows = try JSONCoding.decoder.decode([ServiceStat].self, from: Data(result.out.utf8))
                guard let row = rows.first, row.denials == 5 else { throw TestFailure("not reported yet: \(result.out) \(result.err)") }
                return row
            }
            XCTAssertEqual(stat.instances, 1)
            XCTAssertEqual(stat.successRate, 1, "a 403 is an answer, not a failure")
            XCTAssertGreaterThan(stat.requestsPerSecond, 0)
            XCTAssertEqual(stat.mtlsShare, 1)
            XCTAssertNotNil(stat.p50Ms)
            XCTAssertLessThanOrEqual(stat.p50Ms ?? 0, stat.p99Ms ?? 0)

            // The caller's proxy reports on its own schedule: wait for its view too.
            let (rows, edge) = try await eventually(timeout: .seconds(10), interval: .milliseconds(250)) { () -> ([EdgeStat], EdgeStat) in
                let result = try await mesh.cli(["edges", "--window", "30s", "-o", "json"])
                let rows = try JSONCoding.decoder.decode([EdgeStat].self, from: Data(result.out.utf8))
                guard let edge = rows.first(where: { $0.source == "web" && $0.destination == "api" }), edge.denials == 5 else {
                    throw TestFailure("web → api not reported yet: \(result.out) \(result.err)")
                }
                return (rows, edge)
            }
            XCTAssertEqual(edge.sourceIdentity, "spiffe://mesh.local/ns/default/sa/web")
            XCTAssertEqual(edge.destinationIdentity, "spiffe://mesh.local/ns/default/sa/api")
            XCTAssertTrue(edge.mtls)
            XCTAssertEqual(edge.denials, 5)
            XCTAssertEqual(edge.failures, 0)
            XCTAssertEqual(Set(edge.hopsMs?.keys ?? [:].keys), ["caller-proxy", "network", "peer-proxy", "app"])
            XCTAssertEqual(rows.filter { $0.destination == "api" }.count, 1, "one row per edge, not one per side")

            let table = try await mesh.cli(["edges", "--window", "30s"])
            XCTAssertTrue(table.out.hasPrefix("FROM"), table.out)
            XCTAssertTrue(table.out.contains("spiffe://mesh.local/ns/default/sa/web  yes"), table.out)
            let statTable = try await mesh.cli(["stat"])
            XCTAssertTrue(statTable.out.contains("100.00%"), statTable.out)
            // mesh top: the busiest paths of api, from the same reports.
            let top = try await eventually(timeout: .seconds(5), interval: .milliseconds(250)) { () -> [PathStat] in
                let result = try await mesh.cli(["top", "api", "--window", "30s", "-o", "json"])
                let rows = try JSONCoding.decoder.decode([PathStat].self, from: Data(result.out.utf8))
                guard rows.count >= 2 else { throw TestFailure("not reported yet: \(result.out) \(result.err)") }
                return rows
            }
            XCTAssertEqual(top.map { "\($0.method) \($0.path)" }.prefix(2), ["GET /", "GET /admin"])
            XCTAssertEqual(top.first?.successRate, 1)
            let once = try await mesh.cli(["top", "api", "--once"])
            XCTAssertTrue(once.out.hasPrefix("METHOD  PATH"), once.out)

            let unknown = try await mesh.cli(["stat", "nosuch"])
            XCTAssertNotEqual(unknown.status, 0)
            XCTAssertTrue(unknown.err.contains("no service named 'nosuch'"), unknown.err)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
