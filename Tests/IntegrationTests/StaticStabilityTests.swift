import Foundation
import MeshCore
import MeshIdentity
import MeshTesting
import XCTest

/// The mesh without its control plane: proxies keep serving with their last registry,
/// policies and SVIDs, say how stale they are, come back after a restart only with a
/// still-valid saved SVID, and converge when the control plane returns.
final class StaticStabilityTests: XCTestCase {
    func testAProxyRestartedWhileTheControlPlaneIsDownServesOnlyWithAStillValidSavedSVID() async throws {
        let mesh = try await TestMesh.start(svidTTL: "20s")
        let app = try await TestApp.start("api")
        let state = mesh.directory.appendingPathComponent("api-state")
        let inbound = try PostgresServer.freePort()
        var arguments: [String] = []
        do {
            let token = try await mesh.token(for: "api")
            arguments = ["proxy", "--service", "api", "--app", app.address.description, "--inbound", "127.0.0.1:\(inbound)",
                         "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--control", mesh.listen.description,
                         "--ca-file", mesh.caFile.path, "--heartbeat-interval", "500ms", "--state-dir", state.path]
            var api = try MeshProcess(arguments + ["--token", token], logDirectory: mesh.directory)
            mesh.proxies.append(api)
            _ = try await api.waitForLine(prefix: "mesh proxy ready:")
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            // What is kept, and how: a private directory of private files.
            XCTAssertEqual(try mode(of: state), 0o700)
            for file in ["svid.pem", "bundle.pem", "registry.json", "instance-id"] {
                XCTAssertEqual(try mode(of: state.appendingPathComponent(file)), 0o600, file)
            }

            // The control plane goes away; the api proxy restarts without a token.
            await mesh.control.stop()
            await api.stop()
            api = try MeshProcess(arguments, logDirectory: mesh.directory)
            mesh.proxies.append(api)
            let ready = try await api.waitForLine(prefix: "mesh proxy ready:")
            XCTAssertNotNil(ready["admin"])
            XCTAssertTrue(api.log.contains("serving with the SVID and registry saved in the state directory"), api.log)
            let through = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(through.status.code, 200, "the restarted proxy serves with its saved SVID")
            let admin = try HostPort(parsing: ready["admin"] ?? "")
            let readiness = try await plainGet(admin, "/ready")
            XCTAssertEqual(readiness.status.code, 200, "still ready: it serves")
            XCTAssertTrue(readiness.text.contains("STALE"), readiness.text)
            let metrics = try await plainGet(admin, "/metrics").text
            XCTAssertTrue(metrics.contains("mesh_control_plane_stale 1"), String(metrics.prefix(3000)))

            // The control plane returns: the proxy converges (registered, fresh view).
            try await mesh.restartControl()
            _ = try await eventually(timeout: .seconds(15)) {
                let text = try await plainGet(admin, "/ready").text
                guard !text.contains("STALE") else { throw TestFailure("still stale: \(text)") }
            }
            let fresh = try await plainGet(admin, "/metrics").text
            XCTAssertTrue(fresh.contains("mesh_control_plane_stale 0"), String(fresh.prefix(3000)))

            // Down again, long enough for the saved SVID to expire: a restart is refused, saying why.
            await mesh.control.stop()
            let chain = try PEM.certificates(from: String(contentsOf: state.appendingPathComponent("svid.pem"), encoding: .utf8))
            let notAfter = try XCTUnwrap(chain.first?.notValidAfter)
            await api.stop()
            let wait = notAfter.timeIntervalSinceNow + 1
            if wait > 0 { try await Task.sleep(for: .seconds(wait)) }
            let refused = try await MeshProcess.runToEnd(arguments)
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.err.contains("no still-valid SVID") && refused.err.contains("expired at"), refused.err)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    private func mode(of url: URL) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        return (attributes[.posixPermissions] as? Int ?? 0) & 0o777
    }

    /// Every replica down for a minute (MESH_OUTAGE_SECONDS to shorten it locally) under load:
    /// no request fails, proxies say they are stale, and once the replicas are back the
    /// proxies converge without being expired.
    func testAllReplicasDownUnderLoadFailNoRequestThenTheMeshConverges() async throws {
        try requirePostgreSQL()
        let outage = Double(ProcessInfo.processInfo.environment["MESH_OUTAGE_SECONDS"] ?? "") ?? 60
        let mesh = try await ReplicatedMesh.start(replicas: 3)
        let app = try await TestApp.start("api")
        do {
            let applied = try await mesh.apply(ReplicatedMesh.webToAPI)
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 200 else { throw TestFailure("not allowed yet: \(status)") }
            }
            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(500))
            for index in 0..<3 { await mesh.stopReplica(index) }
            try await Task.sleep(for: .seconds(min(outage, 5)))
            let stale = try await plainGet(web.admin, "/ready")
            XCTAssertEqual(stale.status.code, 200)
            XCTAssertTrue(stale.text.contains("STALE"), stale.text)
            if outage > 5 { try await Task.sleep(for: .seconds(outage - 5)) }
            let during = load.successes.withLockedValue { $0 }

            for index in 0..<3 { try await mesh.startReplica(index) }
            let back = ContinuousClock.now
            let converged = try await waitUntil(timeout: .seconds(30)) {
                !((try? await plainGet(web.admin, "/ready").text.contains("STALE")) ?? true)
            }
            // Past the sweep's grace (TTL + 10 s): nobody was expired, traffic still flows.
            try await Task.sleep(for: .seconds(14))
            await load.stop()
            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            let listed = try await mesh.services(replica: 1).flatMap(\.instances).count
            print("static stability: all 3 replicas down for \(Int(outage)) s under load: \(successes) requests ok (\(during) before the replicas returned), \(failures.count) failed; proxies fresh again \(converged) after the replicas returned; \(listed) instances listed after the sweep's grace")
            XCTAssertEqual(failures, [], "no request fails while the control plane is gone")
            XCTAssertEqual(listed, 2, "no instance was expired for the outage")
            _ = back
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// PostgreSQL stops under load: replicas answer 503 with the reason and refuse changes,
    /// proxies keep serving; PostgreSQL returns and the replicas recover by themselves.
    func testPostgreSQLStoppedUnderLoadDegradesTheReplicasThatRecoverByThemselves() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 2)
        let app = try await TestApp.start("api")
        do {
            let applied = try await mesh.apply(ReplicatedMesh.webToAPI)
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 200 else { throw TestFailure("not allowed yet: \(status)") }
            }
            let retries = "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {retries: {attempts: 3}}\n"
            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(300))

            mesh.database.stopServer()
            let degraded = try await eventually(timeout: .seconds(15)) { () async throws -> String in
                let health = try await mesh.adminClient(0).get("/v1/health")
                guard health.status.code == 503 else { throw TestFailure("health still \(health.status.code)") }
                return health.text
            }
            XCTAssertTrue(degraded.contains("store does not answer"), degraded)
            let refused = try await mesh.apply(retries, replica: 1)
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.err.contains("PostgreSQL"), refused.err)
            try await Task.sleep(for: .seconds(5))

            try await mesh.database.startServer()
            let recovered = try await waitUntil(timeout: .seconds(30)) {
                (try? await mesh.adminClient(0).get("/v1/health").status.code) == 200
            }
            let reapplied = try await mesh.apply(retries, replica: 1)
            XCTAssertEqual(reapplied.status, 0, reapplied.err)
            // Past the sweep's grace after the outage: nobody expired, no request failed.
            try await Task.sleep(for: .seconds(14))
            await load.stop()
            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            let listed = try await mesh.services(replica: 0).flatMap(\.instances).count
            print("static stability: PostgreSQL stopped for about 8 s under load: replicas answered 503 (\(degraded.prefix(160))) and refused changes; recovered \(recovered) after it returned; \(successes) requests ok, \(failures.count) failed; \(listed) instances listed")
            XCTAssertEqual(failures, [])
            XCTAssertEqual(listed, 2, "no instance was expired for the database outage")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
