import Foundation
import MeshCore
import MeshTesting
import NIOCore
import NIOPosix
import XCTest

/// `ServiceDefaults`: the mTLS mode and labels of a service, set centrally, override the
/// proxies' flags on every running proxy without a restart.
final class ServiceDefaultsTests: XCTestCase {
    private static func apply(_ yaml: String, to mesh: TestMesh) async throws {
        let url = mesh.directory.appendingPathComponent("resource-\(UUID().uuidString.prefix(6)).yaml")
        try yaml.write(to: url, atomically: true, encoding: .utf8)
        let result = try await mesh.cli(["apply", "-f", url.path])
        guard result.status == 0 else { throw TestFailure("mesh apply failed: \(result.err)") }
    }

    func testCentralMTLSModeSwitchesRunningProxiesBothWays() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            // The proxy's flag says strict (the default).
            let api = try await mesh.proxy("api", app: app.address)
            let strictBefore = try await TLSProbe.plaintext(api.inbound)
            XCTAssertEqual(strictBefore, .closedWithoutResponse)
            let refused = try await mesh.cli(["explain", "--from", "unauthenticated", "--from-ip", "127.0.0.1", "--to", "api"])
            XCTAssertTrue(refused.out.contains("DENIED (plaintext-refused)"), refused.out)
            XCTAssertTrue(refused.out.contains("mTLS: strict (proxy flag)"), refused.out)
            XCTAssertTrue(refused.out.contains("spec: {mtls: permissive}"), refused.out)

            // Permissive, centrally, plus a rule for the legacy caller's network.
            let applied = ContinuousClock.now
            try await Self.apply("""
                kind: ServiceDefaults
                metadata: {name: api}
                spec: {mtls: permissive}
                ---
                kind: AuthorizationPolicy
                metadata: {name: legacy-lb}
                spec:
                  selector: {service: api}
                  rules: [{from: [{unauthenticated: true, ipBlocks: ["127.0.0.0/8"]}]}]
                """, to: mesh)
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(10)) {
                let response = try await plainGet(api.inbound, "/legacy")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            let propagation = ContinuousClock.now - applied
            XCTAssertLessThan(propagation, .seconds(2), "ServiceDefaults took \(propagation) to reach the proxy (apply included)")
            let allowed = try await mesh.cli(["explain", "--from", "unauthenticated", "--from-ip", "127.0.0.1", "--to", "api"])
            XCTAssertTrue(allowed.out.contains("ALLOWED (allowed-by-policy) by policy legacy-lb"), allowed.out)
            XCTAssertTrue(allowed.out.contains("mTLS: permissive (ServiceDefaults/api)"), allowed.out)

            // A plaintext connection opened while permissive, kept alive across the switch
            // back to strict: its next request is refused, and new ones fail in the handshake.
            try await KeepAliveConnection.with(api.inbound) { connection in
                let first = try await connection.get("/legacy")
                XCTAssertTrue(first.hasPrefix("HTTP/1.1 200"), first)
                let deleted = try await mesh.cli(["delete", "servicedefaults", "api"])
                XCTAssertEqual(deleted.status, 0, deleted.err)
                XCTAssertTrue(deleted.out.contains("servicedefaults/api deleted"), deleted.out)
                _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                    let outcome = try await TLSProbe.plaintext(api.inbound)
                    guard outcome == .closedWithoutResponse else { throw TestFailure("plaintext still \(outcome)") }
                    return outcome
                }
                let second = try await connection.get("/legacy")
                XCTAssertTrue(second.hasPrefix("HTTP/1.1 403"), second)
                XCTAssertTrue(second.lowercased().contains("x-mesh-error: plaintext-refused"), second)
            }
            XCTAssertEqual(app.requests.filter { $0.path == "/legacy" }.count, 2, "only the requests made while permissive reach the app")

            let history = try await mesh.cli(["history"])
            for line in ["created  servicedefaults/api", "deleted  servicedefaults/api"] {
                XCTAssertTrue(history.out.contains(line), "missing '\(line)' in:\n\(history.out)")
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testCentralLabelsOverrideTheProxiesOwnForPolicies() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: app.address)
            // The workload claims team=payments on its own flag; the platform team says otherwise.
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9), labels: ["team=payments"])
            try await Self.apply("""
                kind: AuthorizationPolicy
                metadata: {name: payments-only}
                spec:
                  selector: {service: api}
                  rules: [{from: [{labels: "team=payments"}]}]
                """, to: mesh)
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }

            try await Self.apply("""
                kind: ServiceDefaults
                metadata: {name: web}
                spec:
                  labels: {team: storefront}
                """, to: mesh)
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 403 else { throw TestFailure("still \(response.status.code)") }
                return response
            }

            // Every view agrees on the effective labels.
            let services = try await mesh.services()
            XCTAssertEqual(services.first { $0.service.rawValue == "web" }?.instances.first?.labels.values["team"], "storefront")
            let explained = try await mesh.cli(["explain", "--from", "web", "--to", "api"])
            XCTAssertTrue(explained.out.contains("team=storefront"), explained.out)
            XCTAssertTrue(explained.out.contains("DENIED (denied-no-matching-allow)"), explained.out)
            let listed = try await mesh.cli(["get", "sd"])
            let row = listed.out.split(separator: "\n").first { $0.hasPrefix("web ") }?.split(separator: " ").map(String.init)
            XCTAssertEqual(row, ["web", "(proxy", "flag)", "team=storefront"], listed.out)
            let yaml = try await mesh.cli(["get", "servicedefaults", "web", "-o", "yaml"])
            XCTAssertTrue(yaml.out.contains("kind: ServiceDefaults"), yaml.out)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    func testInvalidServiceDefaultsAreRefusedWithFileLineAndField() async throws {
        let mesh = try await TestMesh.start()
        do {
            let file = mesh.directory.appendingPathComponent("bad.yaml")
            try """
                kind: ServiceDefaults
                metadata: {name: api}
                spec:
                  mtls: sometimes
                """.write(to: file, atomically: true, encoding: .utf8)
            let bad = try await mesh.cli(["apply", "-f", file.path])
            XCTAssertNotEqual(bad.status, 0)
            XCTAssertTrue(bad.err.contains("bad.yaml:4: ServiceDefaults 'api': field 'spec.mtls' must be strict or permissive"), bad.err)

            try """
                kind: ServicePolicy
                metadata: {name: api}
                spec: {}
                """.write(to: file, atomically: true, encoding: .utf8)
            let unknown = try await mesh.cli(["apply", "-f", file.path])
            XCTAssertNotEqual(unknown.status, 0)
            XCTAssertTrue(unknown.err.contains("unknown kind 'ServicePolicy'; known: AuthorizationPolicy, ServiceDefaults"), unknown.err)

            // The server checks too.
            let raw = try await mesh.adminClient().send(.POST, AdminAPI.resourcesPath, json: [
                ServiceDefaults(service: "Not-A-Service", spec: .init(mtls: "strict")),
            ])
            XCTAssertEqual(raw.status.code, 400, raw.text)
            XCTAssertTrue(raw.text.contains("field 'metadata.name'"), raw.text)
            let set = try await mesh.adminClient().get(AdminAPI.policiesPath).decode(PolicySet.self)
            XCTAssertTrue(set.services.isEmpty)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }
}

/// One plaintext HTTP/1.1 connection kept open across requests.
struct KeepAliveConnection {
    var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    static func with(_ target: HostPort, _ body: (inout KeepAliveConnection) async throws -> Void) async throws {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        try await channel.executeThenClose { inbound, outbound in
            var connection = KeepAliveConnection(inbound: inbound.makeAsyncIterator(), outbound: outbound)
            try await body(&connection)
        }
    }

    /// Sends a GET and returns the whole response (head and a Content-Length body).
    mutating func get(_ path: String) async throws -> String {
        try await outbound.write(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: api\r\n\r\n"))
        var received = ""
        while true {
            if let headEnd = received.range(of: "\r\n\r\n") {
                let head = received[..<headEnd.lowerBound].lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if received.utf8.count - received[..<headEnd.upperBound].utf8.count >= length { return received }
            }
            guard var chunk = try await inbound.next() else { return received }
            received += chunk.readString(length: chunk.readableBytes) ?? ""
        }
    }
}
