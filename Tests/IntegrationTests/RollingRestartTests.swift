import Foundation
import MeshCore
import MeshTesting
import NIOConcurrencyHelpers
import XCTest

/// The daily operations of a mesh under load: every instance of a service replaced one by
/// one, and configuration changed while requests flow, without a single failed request.
final class RollingRestartTests: XCTestCase {
    func testRollingRestartOfEveryInstanceUnderLoadFailsNoRequest() async throws {
        let mesh = try await TestMesh.start()
        var apps: [TestApp] = []
        var proxies: [TestMesh.Proxy] = []
        do {
            for i in 0..<3 {
                let app = try await TestApp.start("api-\(i)")
                apps.append(app)
                proxies.append(try await mesh.proxy("api", app: app.address))
            }
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            try await waitForInstances(mesh, 3)
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }

            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(500))
            // Replace each instance as an orchestrator would: stop the old pod (its proxy
            // leaves the registry and drains, then the app stops), start a new one, and move
            // on once it is registered.
            for i in 0..<3 {
                let exit = await proxies[i].process.stop()
                XCTAssertEqual(exit, 0, "the proxy drains and exits cleanly")
                await apps[i].stop()
                let app = try await TestApp.start("api-\(i)-new")
                apps[i] = app
                proxies[i] = try await mesh.proxy("api", app: app.address)
                try await waitForInstances(mesh, 3)
                try await Task.sleep(for: .milliseconds(500))
            }
            await load.stop()
            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            print("rolling restart of 3 instances under load: \(successes) requests ok, \(failures.count) failed")
            XCTAssertEqual(failures, [], "no request fails while every instance is replaced")
            XCTAssertGreaterThan(successes, 300)
            for app in apps {
                XCTAssertGreaterThan(app.requests.count, 0, "every new instance took traffic (\(app.name))")
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        for app in apps { await app.stop() }
        await mesh.shutdown()
    }

    /// Policies, traffic policies and endpoints change while requests flow: none is dropped.
    func testConfigurationChangesUnderLoadFailNoRequest() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let first = try await TestApp.start("api-1")
        let second = try await TestApp.start("api-2")
        do {
            let allow = try write("""
                kind: AuthorizationPolicy
                metadata: {name: web-to-api}
                spec: {selector: {service: api}, rules: [{from: [{services: [web]}]}]}
                """, in: mesh, "allow.yaml")
            let applied = try await mesh.cli(["apply", "-f", allow])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("api", app: first.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 200 else { throw TestFailure("not allowed yet: \(response.status)") }
            }

            let load = MeshLoad()
            load.start(through: web.outbound, service: "api")
            try await Task.sleep(for: .milliseconds(300))
            // Each change is pushed to the proxies while requests are in flight.
            let changes = [
                ("tp-rr.yaml", "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {loadBalancer: round-robin, retries: {attempts: 3}}\n"),
                ("allow-narrow.yaml", """
                    kind: AuthorizationPolicy
                    metadata: {name: web-to-api}
                    spec: {selector: {service: api}, rules: [{from: [{services: [web]}], to: [{methods: [GET], paths: ["/work", "/"]}]}]}
                    """),
                ("tp-timeouts.yaml", "kind: TrafficPolicy\nmetadata: {name: api}\nspec: {loadBalancer: least-request, timeouts: {request: 5s}}\n"),
                ("other.yaml", """
                    kind: AuthorizationPolicy
                    metadata: {name: nobody-to-store}
                    spec: {selector: {service: store}, rules: [{from: [{services: [nobody]}]}]}
                    """),
            ]
            for (name, text) in changes {
                let applied = try await mesh.cli(["apply", "-f", try write(text, in: mesh, name)])
                XCTAssertEqual(applied.status, 0, applied.err)
                try await Task.sleep(for: .milliseconds(400))
            }
            // An endpoint joins, then the first one leaves.
            _ = try await mesh.proxy("api", app: second.address)
            try await Task.sleep(for: .milliseconds(600))
            await mesh.proxies.first { $0.arguments.contains(first.address.description) }?.stop()
            try await Task.sleep(for: .milliseconds(600))
            let deleted = try await mesh.cli(["delete", "tp", "api"])
            XCTAssertEqual(deleted.status, 0, deleted.err)
            try await Task.sleep(for: .milliseconds(400))
            await load.stop()

            let failures = load.failures.withLockedValue { $0 }
            let successes = load.successes.withLockedValue { $0 }
            print("configuration changes under load: \(successes) requests ok, \(failures.count) failed")
            XCTAssertEqual(failures, [], "no request fails while the configuration changes")
            XCTAssertGreaterThan(successes, 200)
            XCTAssertGreaterThan(second.requests.count, 0, "the new endpoint took traffic")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await first.stop()
        await second.stop()
        await mesh.shutdown()
    }

    private func write(_ text: String, in mesh: TestMesh, _ name: String) throws -> String {
        let url = mesh.directory.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    private func waitForInstances(_ mesh: TestMesh, _ count: Int) async throws {
        try await waitUntil(timeout: .seconds(10)) {
            ((try? await mesh.services()) ?? []).first { $0.service.rawValue == "api" }?.instances.count == count
        }
    }
}
