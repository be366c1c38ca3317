import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `mesh control --store postgres://…` against a real PostgreSQL: the mesh works as with the
/// embedded store, what the control plane keeps is in the database and survives a restart, and
/// a second control plane on the same database is refused with a clear message.
final class PostgresControlPlaneTests: XCTestCase {
    func testControlPlaneOnPostgreSQLKeepsTheMeshAcrossARestart() async throws {
        guard PostgresServer.binDirectory != nil else {
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                XCTFail("PostgreSQL is required (MESH_REQUIRE_TOOLS=1) but not installed")
            }
            throw XCTSkip("PostgreSQL not installed (apt-get install postgresql)")
        }
        let database = try await PostgresServer.start()
        let url = "postgres://postgres@127.0.0.1:\(database.port)/postgres?sslmode=disable"
        let mesh = try await TestMesh.start(defaultPolicy: "deny", extra: ["--store", url])
        let app = try await TestApp.start("api")
        do {
            let policy = mesh.directory.appendingPathComponent("allow.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-to-api}
                spec: {selector: {service: api}, rules: [{from: [{services: [web]}]}]}
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let first = try await eventually { () async throws -> Int in
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 200 else { throw TestFailure("not allowed yet: \(status)") }
                return Int(status)
            }
            XCTAssertEqual(first, 200)

            // What the control plane keeps is in PostgreSQL.
            let rows = try PostgresServer.psql("SELECT kind || '/' || name FROM resources; SELECT service FROM instances ORDER BY service",
                                               at: database.address)
            XCTAssertEqual(rows.out.split(separator: "\n").map(String.init), ["AuthorizationPolicy/web-to-api", "api", "web"], rows.err)

            // A second control plane on the same database is refused, saying why.
            let other = mesh.directory.appendingPathComponent("other")
            let refused = try await MeshProcess.runToEnd(["control", "--data-dir", other.path, "--listen", "127.0.0.1:0",
                                                          "--admin", "127.0.0.1:0", "--store", url])
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.err.contains("another mesh control already uses the PostgreSQL database"), refused.err)

            // Restarted on the same database: the policy and the registry are still there.
            try await mesh.restartControl(downtime: .seconds(1))
            let services = try await eventually { () async throws -> [String] in
                let names = try await mesh.services().map(\.service.rawValue).sorted()
                guard names == ["api", "web"] else { throw TestFailure("registry: \(names)") }
                return names
            }
            XCTAssertEqual(services, ["api", "web"])
            let listed = try await mesh.cli(["get", "policies"])
            XCTAssertTrue(listed.out.contains("web-to-api"), listed.out + listed.err)
            let after = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(after.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
        database.stop()
    }
}
