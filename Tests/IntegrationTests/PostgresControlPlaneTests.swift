import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `mesh control --store postgres://…` against a real PostgreSQL: the mesh works as with the
/// embedded store, what the control plane keeps is in the database and survives a restart, the
/// CA key is in the database only sealed, and a replica with the wrong secret is refused.
final class PostgresControlPlaneTests: XCTestCase {
    func testControlPlaneOnPostgreSQLKeepsTheMeshAcrossARestart() async throws {
        try requirePostgreSQL()
        let database = try await PostgresServer.start()
        let url = "postgres://postgres@127.0.0.1:\(database.port)/postgres?sslmode=disable"
        let secretDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: secretDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: secretDirectory) }
        let secret = secretDirectory.appendingPathComponent("store.secret")
        FileManager.default.createFile(atPath: secret.path, contents: Data(Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString().utf8),
                                       attributes: [.posixPermissions: 0o600])
        // Without the secret, the control plane says what it needs.
        let noSecret = try await MeshProcess.runToEnd(["control", "--data-dir", secretDirectory.appendingPathComponent("x").path,
                                                       "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--store", url])
        XCTAssertNotEqual(noSecret.status, 0)
        XCTAssertTrue(noSecret.err.contains("--store-secret-file"), noSecret.err)
        let mesh = try await TestMesh.start(defaultPolicy: "deny", extra: ["--store", url, "--store-secret-file", secret.path])
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

            // The CA key is in the database, sealed; not in plaintext there, nor in the data directory.
            let stored = try PostgresServer.psql("SELECT value FROM meta WHERE key = 'shared.trust'", at: database.address)
            XCTAssertTrue(stored.out.contains("BEGIN CERTIFICATE"), stored.out + stored.err)
            XCTAssertFalse(stored.out.contains("PRIVATE KEY"), "the CA key is sealed in the database")
            XCTAssertFalse(FileManager.default.fileExists(atPath: mesh.dataDir.appendingPathComponent("ca.key").path))
            // A replica with another secret cannot open it and says so.
            let other = mesh.directory.appendingPathComponent("other")
            let wrong = mesh.directory.appendingPathComponent("wrong.secret")
            FileManager.default.createFile(atPath: wrong.path, contents: Data(String(repeating: "x", count: 40).utf8),
                                           attributes: [.posixPermissions: 0o600])
            let refused = try await MeshProcess.runToEnd(["control", "--data-dir", other.path, "--listen", "127.0.0.1:0",
                                                          "--admin", "127.0.0.1:0", "--store", url, "--store-secret-file", wrong.path])
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.err.contains("does not open the CA private key"), refused.err)

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
