import Foundation
import MeshCore
import MeshIdentity
import MeshTesting
import XCTest

/// `mesh ca rotate` under load, on three replicas: the new root reaches every bundle before it
/// signs anything, every proxy renews onto it, the old root leaves, and no request fails.
final class RotationTests: XCTestCase {
    func testAFullRootRotationUnderLoadFailsNoRequest() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 3, extra: ["--rotation-renew-window", "2s"])
        let first = try await TestApp.start("api-1")
        let second = try await TestApp.start("api-2")
        do {
            let applied = try await mesh.apply(ReplicatedMesh.webToAPI)
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: first.address)
            _ = try await mesh.proxy("api", app: second.address, controls: [1, 0])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 200 else { throw TestFailure("not allowed yet: \(status)") }
            }
            let before = try await mesh.adminClient(0).get(AdminAPI.caPath).decode(CAStatus.self)
            XCTAssertEqual(before.phase, "stable")
            XCTAssertEqual(before.roots.count, 1)
            let oldRoot = try XCTUnwrap(before.roots.first?.fingerprint)

            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(500))
            let started = ContinuousClock.now
            let rotated = try await mesh.cli(["ca", "rotate", "--wait", "--timeout", "120s"], replica: 1)
            let took = ContinuousClock.now - started
            try await Task.sleep(for: .seconds(1))
            await load.stop()
            XCTAssertEqual(rotated.status, 0, rotated.err + rotated.out)
            XCTAssertTrue(rotated.out.contains("phase signing") && rotated.out.contains("phase retiring"), rotated.out)

            let after = try await mesh.adminClient(0).get(AdminAPI.caPath).decode(CAStatus.self)
            XCTAssertEqual(after.phase, "stable")
            XCTAssertEqual(after.roots.count, 1)
            let newRoot = try XCTUnwrap(after.roots.first?.fingerprint)
            XCTAssertNotEqual(newRoot, oldRoot, "a new root")
            XCTAssertTrue(after.pending.isEmpty)
            for replica in 0..<3 {
                let bundle = try TrustBundle(pem: String(contentsOf: mesh.dataDir(replica).appendingPathComponent("ca.pem"), encoding: .utf8))
                XCTAssertEqual(bundle.fingerprints, [newRoot], "replica \(replica)'s ca.pem holds the new root only")
            }
            let listed = try await mesh.services(replica: 1).flatMap(\.instances)
            XCTAssertEqual(listed.count, 3)

            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            print("rotation: a full root rotation on 3 replicas with 3 proxies under load took \(took): \(successes) requests ok, \(failures.count) failed\n\(rotated.out)")
            XCTAssertEqual(failures, [], "no request fails during the rotation")
            XCTAssertGreaterThan(successes, 100)

            // A proxy joining afterwards, with the new ca.pem, works with the others.
            let late = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), controls: [1])
            let through = try await eventually { try await callThroughMesh(late.outbound, service: "api") }
            XCTAssertEqual(through.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await first.stop()
        await second.stop()
        await mesh.shutdown()
    }
}
