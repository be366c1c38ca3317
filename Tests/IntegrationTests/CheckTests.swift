import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `mesh check` names what an operator must act on, says what to do, and exits accordingly.
final class CheckTests: XCTestCase {
    func testCheckReportsAuditModeAndExitsByStrictness() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        do {
            _ = try await mesh.proxy("api", app: HostPort(host: "127.0.0.1", port: 9))
            let relaxed = try await mesh.cli(["check"])
            XCTAssertEqual(relaxed.status, 0, relaxed.err)
            XCTAssertTrue(relaxed.out.contains("WARN  policy: the default policy is audit"), relaxed.out)
            XCTAssertTrue(relaxed.out.contains("ok    roots: root "), relaxed.out)
            XCTAssertTrue(relaxed.out.contains("ok    svids: 1 instance(s), every SVID renewed in time"), relaxed.out)
            let strict = try await mesh.cli(["check", "--strict"])
            XCTAssertEqual(strict.status, 2, "warnings fail with --strict")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testCheckNamesAReplicaThatStoppedAndAProxyThatWentSilent() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 2, heartbeatTTL: "20s")
        do {
            let healthy = try await mesh.cli(["check"], replica: 1)
            XCTAssertEqual(healthy.status, 0, healthy.out + healthy.err)
            XCTAssertTrue(healthy.out.contains("ok    replicas: 2 replica(s) reporting"), healthy.out)
            let api = try await mesh.proxy("api", app: HostPort(host: "127.0.0.1", port: 9))
            await mesh.stopReplica(0)
            await api.process.stop(signal: SIGKILL)
            let report = try await eventually(timeout: .seconds(40), interval: .seconds(1)) { () async throws -> String in
                let run = try await mesh.cli(["check"], replica: 1)
                guard run.out.contains("WARN  replicas: replica"), run.out.contains("WARN  proxies: api-") else {
                    throw TestFailure("not yet: \(run.out)")
                }
                return run.out
            }
            XCTAssertTrue(report.contains("last seen") && report.contains("down or cut off from the database"), report)
            XCTAssertTrue(report.contains("last heartbeat") && report.contains("leaves the registry after 20 s"), report)
            print("mesh check after a replica and a proxy stopped:\n\(report)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }
}
