import Foundation
import MeshCore
import MeshTesting
import XCTest

/// Three `mesh control` replicas on one PostgreSQL serve one mesh: a change through any
/// replica reaches proxies of every other within a second, join tokens stay single-use across
/// them, a replica can die under load without a failed request, its duties move, and
/// concurrent applies through two replicas lose nothing.
final class ReplicaTests: XCTestCase {
    func testAChangeThroughOneReplicaReachesProxiesOfTheOthersWithinASecond() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 3)
        let app = try await TestApp.start("api")
        do {
            // api follows replica 0, web follows replica 1; web's token comes from replica 0.
            _ = try await mesh.proxy("api", app: app.address, controls: [0])
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), controls: [1], tokenFrom: 0)
            let listed = try await eventually { () async throws -> [String] in
                let names = try await mesh.services(replica: 2).map(\.service.rawValue).sorted()
                guard names == ["api", "web"] else { throw TestFailure("replica 2 lists \(names)") }
                return names
            }
            XCTAssertEqual(listed, ["api", "web"], "registrations through replicas 0 and 1 are listed by replica 2")
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 403 else { throw TestFailure("expected a denial before any policy, got \(status)") }
            }

            // The policy goes in through replica 2, which neither proxy talks to.
            let applied = try await mesh.apply(ReplicatedMesh.webToAPI, replica: 2)
            XCTAssertEqual(applied.status, 0, applied.err)
            let propagation = try await waitUntil(timeout: .seconds(10)) {
                (try? await callThroughMesh(web.outbound, service: "api").status.code) == 200
            }
            print("replicas: a policy applied through replica 2 was enforced by proxies of replicas 0 and 1 after \(propagation)")
            XCTAssertLessThan(propagation, .seconds(1), "a change reaches proxies of another replica within 1 s")

            // The token web used (made by replica 0, spent through replica 1) cannot join again
            // through replica 2.
            let created = try await mesh.cli(["token", "create", "--service", "worker"], replica: 0)
            let token = created.out.trimmingCharacters(in: .whitespacesAndNewlines)
            var outcomes: [Int32] = []
            var errors = ""
            for replica in [1, 2] {
                let run = try await MeshProcess.runToEnd([
                    "proxy", "--service", "worker", "--app", "127.0.0.1:9", "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                    "--admin", "127.0.0.1:0", "--control", mesh.listens[replica].description, "--ca-file", mesh.caFile.path,
                    "--token", token, "--", "sh", "-c", "exit 0"])
                outcomes.append(run.status)
                errors += run.err
            }
            XCTAssertEqual(outcomes.first, 0, "the token joins through replica 1: \(errors.suffix(2000))")
            XCTAssertNotEqual(outcomes.last, 0, "and is spent for replica 2")
            XCTAssertTrue(errors.contains("already used"), String(errors.suffix(2000)))
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testKillingAReplicaUnderLoadFailsNoRequestAndItsDutiesMove() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 3)
        let first = try await TestApp.start("api-1")
        let second = try await TestApp.start("api-2")
        do {
            let applied = try await mesh.apply(ReplicatedMesh.webToAPI, replica: 1)
            XCTAssertEqual(applied.status, 0, applied.err)
            // Every proxy knows all three replicas and starts on replica 0, which (first up)
            // also holds the sweep duty.
            let api = try await mesh.proxy("api", app: first.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually {
                let status = try await callThroughMesh(web.outbound, service: "api").status.code
                guard status == 200 else { throw TestFailure("not allowed yet: \(status)") }
            }

            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(500))
            await mesh.stopReplica(0)
            let killed = ContinuousClock.now
            // A new instance joins through what is left; web must learn of it from another
            // replica, having lost its registry stream with replica 0.
            _ = try await mesh.proxy("api", app: second.address, controls: [1, 2], tokenFrom: 1)
            let registered = ContinuousClock.now - killed
            let afterRegistration = try await waitUntil(timeout: .seconds(20)) { !second.requests.isEmpty }
            try await Task.sleep(for: .seconds(1))
            await load.stop()
            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            print("replicas: replica 0 killed under load: \(successes) requests ok, \(failures.count) failed; a new instance registered through replica 1 \(registered) after the kill, and web (which had followed replica 0) routed to it \(afterRegistration) later")
            XCTAssertEqual(failures, [], "no request fails when a replica dies")
            XCTAssertGreaterThan(successes, 100)
            XCTAssertTrue(web.process.log.contains("moving to the next"), "web's proxy moved to another replica")

            // The sweep duty moved with replica 0's death: an instance whose proxy dies without
            // deregistering still expires.
            await api.process.stop(signal: SIGKILL)
            let expired = try await waitUntil(timeout: .seconds(20)) {
                let instances = (try? await mesh.services(replica: 2).first { $0.service.rawValue == "api" }?.instances.count) ?? -1
                return instances == 1
            }
            print("replicas: an instance whose proxy was killed expired \(expired) later (heartbeat TTL 3 s), swept by a surviving replica")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await first.stop()
        await second.stop()
        await mesh.shutdown()
    }

    /// Two operators apply different versions of one resource at the same time through two
    /// replicas, ten times over: every change is recorded with its own version, and all
    /// replicas end on the same, last one.
    func testConcurrentAppliesThroughTwoReplicasLoseNoUpdate() async throws {
        try requirePostgreSQL()
        let mesh = try await ReplicatedMesh.start(replicas: 3)
        do {
            for round in 0..<10 {
                async let a = mesh.apply(Self.defaults(round: round, writer: "a"), replica: 0)
                async let b = mesh.apply(Self.defaults(round: round, writer: "b"), replica: 1)
                let results = try await [a, b]
                for result in results { XCTAssertEqual(result.status, 0, result.err) }
            }
            let history = try await mesh.adminClient(2).get("\(AdminAPI.historyPath)?limit=100").decode([AuditEntryView].self)
            let versions = history.filter { $0.kind == "ServiceDefaults" && $0.name == "api" }.map(\.version)
            XCTAssertEqual(versions.sorted(), Array(1...20), "20 changes, 20 versions: none lost, none shared")
            let last = try XCTUnwrap(history.first { $0.version == 20 }?.after)
            let expected = try XCTUnwrap(last.range(of: "round-[ab]-9", options: .regularExpression).map { String(last[$0]) })
            for replica in 0..<3 {
                let label = try await eventually { () async throws -> String in
                    let text = try await mesh.adminClient(replica).get(AdminAPI.policiesPath).text
                    guard let range = text.range(of: "round-[ab]-[0-9]", options: .regularExpression) else {
                        throw TestFailure("no defaults on replica \(replica): \(text.prefix(300))")
                    }
                    guard String(text[range]) == expected else { throw TestFailure("replica \(replica) has \(text[range])") }
                    return String(text[range])
                }
                XCTAssertEqual(label, expected, "replica \(replica) ends on the last write")
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    private struct AuditEntryView: Decodable {
        var kind: String
        var name: String
        var version: Int
        var after: String?
    }

    private static func defaults(round: Int, writer: String) -> String {
        """
        kind: ServiceDefaults
        metadata: {name: api}
        spec: {labels: {round: round-\(writer)-\(round)}}
        """
    }
}
