import Foundation
import MeshCore
import MeshTesting
import NIOCore
import NIOPosix
import XCTest

/// The proxy's /metrics is valid Prometheus exposition, as Prometheus's own checker says.
final class MetricsTests: XCTestCase {
    func testMetricsEndpointPassesPromtool() async throws {
        guard let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first(where: FileManager.default.isExecutableFile) else {
            // CI installs Debian's prometheus package and sets MESH_REQUIRE_TOOLS=1 so that
            // this check always runs there.
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                return XCTFail("promtool is missing; install Debian's prometheus package (.ci/run does)")
            }
            throw XCTSkip("promtool not installed (apt-get install prometheus)")
        }
        // Audit default: the call is forwarded (every histogram has samples) and counted
        // as a policy decision.
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { () -> Void in
                guard try await callThroughMesh(web.outbound, service: "api").status.code == 200 else { throw TestFailure("not yet") }
            }
            _ = try await callThroughMesh(web.outbound, service: "nosuch") // 503 locally
            let inbound = try await plainGet(api.admin, "/metrics").text
            XCTAssertTrue(inbound.contains("mesh_policy_decisions_total"), inbound)
            let outbound = try await plainGet(web.admin, "/metrics").text
            XCTAssertTrue(outbound.contains("mesh_hop_latency_seconds_bucket"), outbound)
            for exposition in [inbound, outbound] {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: promtool)
                process.arguments = ["check", "metrics"]
                let input = Pipe(), output = Pipe()
                process.standardInput = input
                process.standardOutput = output
                process.standardError = output
                try process.run()
                input.fileHandleForWriting.write(Data(exposition.utf8))
                try input.fileHandleForWriting.close()
                let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                XCTAssertEqual(process.terminationStatus, 0, "promtool check metrics failed:\n\(report)\n\(exposition)")
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// Golden metrics on both sides of a hop, the hop attribution of a slow app, and TLS
    /// handshake failures by reason.
    func testEveryHopIsCountedTimedAndAttributed() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let denied = try await callThroughMesh(web.outbound, service: "api")
            XCTAssertEqual(denied.status.code, 403)
            let policy = mesh.directory.appendingPathComponent("allow.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-to-api}
                spec: {selector: {service: api}, rules: [{from: [{services: [web]}]}]}
                """.write(to: policy, atomically: true, encoding: .utf8)
            _ = try await mesh.cli(["apply", "-f", policy.path])
            _ = try await eventually(timeout: .seconds(5), interval: .milliseconds(20)) {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 200 else { throw TestFailure("still \(response.status.code)") }
                return response
            }
            // The app's one-second path: the attribution must put the time in the app.
            let slow = try await callThroughMesh(web.outbound, service: "api", path: "/slow")
            XCTAssertEqual(slow.status.code, 200)
            // The peer's timing report is for the proxies only: the calling app never sees it.
            let raw = try await RawSocket.send(Array("GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".utf8), to: web.outbound)
            XCTAssertTrue(raw.hasPrefix("HTTP/1.1 200"), raw)
            XCTAssertFalse(raw.lowercased().contains("x-mesh-timing"), raw)
            // A plaintext caller at a strict port: a handshake failure, reason not-tls.
            _ = try await TLSProbe.plaintext(api.inbound)

            let caller = try await plainGet(web.admin, "/metrics").text
            let edge = ["direction": "outbound", "source_service": "web", "destination_service": "api"]
            XCTAssertEqual(Exposition.sum(caller, "mesh_requests_total", edge.merging([
                "status_code": "200", "tls": "true", "source_identity": "spiffe://mesh.local/ns/default/sa/web",
                "destination_identity": "spiffe://mesh.local/ns/default/sa/api"]) { $1 }), 3, caller)
            XCTAssertEqual(Exposition.sum(caller, "mesh_response_latency_seconds_count", edge), 4, "the 403 too\n\(caller)")
            XCTAssertGreaterThan(Exposition.sum(caller, "mesh_response_body_bytes_total", edge), 0, caller)
            let appShare = Exposition.sum(caller, "mesh_hop_latency_seconds_sum", ["destination_service": "api", "hop": "app"])
            XCTAssertGreaterThanOrEqual(appShare, 1.0, "the slow app's second belongs to the app hop\n\(caller)")
            for hop in ["caller-proxy", "network", "peer-proxy"] {
                let share = Exposition.sum(caller, "mesh_hop_latency_seconds_sum", ["destination_service": "api", "hop": hop])
                XCTAssertLessThan(share, appShare / 4, "\(hop) got \(share) s of the slow request\n\(caller)")
                XCTAssertEqual(Exposition.sum(caller, "mesh_hop_latency_seconds_count", ["destination_service": "api", "hop": hop]), 3)
            }
            XCTAssertEqual(Exposition.sum(caller, "mesh_tcp_connections_total", ["direction": "outbound", "peer": "dst"]), 1,
                           "the three requests share one pooled mTLS connection\n\(caller)")

            // The kernel's view of the path to api (TCP_INFO), sampled every two seconds.
            let sampled = try await eventually(timeout: .seconds(8), interval: .milliseconds(250)) { () -> String in
                let text = try await plainGet(web.admin, "/metrics").text
                guard Exposition.sum(text, "mesh_tcp_rtt_seconds", ["destination_service": "api"]) > 0 else {
                    throw TestFailure("no RTT for api yet")
                }
                return text
            }
            XCTAssertLessThan(Exposition.sum(sampled, "mesh_tcp_rtt_seconds", ["destination_service": "api"]), 1, sampled)
            XCTAssertTrue(sampled.contains(#"mesh_tcp_retransmits_total{destination_service="api"}"#), sampled)
            XCTAssertTrue(sampled.contains(#"mesh_tcp_rtt_variance_seconds{destination_service="api"}"#), sampled)

            let callee = try await plainGet(api.admin, "/metrics").text
            XCTAssertEqual(Exposition.sum(callee, "mesh_requests_total", [
                "direction": "inbound", "source_service": "web", "source_identity": "spiffe://mesh.local/ns/default/sa/web",
                "destination_service": "api", "status_code": "200", "tls": "true"]), 3, callee)
            XCTAssertEqual(Exposition.sum(callee, "mesh_requests_total", [
                "direction": "inbound", "source_service": "web", "status_code": "403"]), 1, "the denial before the policy")
            XCTAssertEqual(Exposition.sum(callee, "mesh_tls_handshake_failures_total", ["direction": "inbound", "reason": "not-tls"]), 1, callee)
            XCTAssertGreaterThanOrEqual(Exposition.sum(callee, "mesh_tcp_connections_open", ["direction": "inbound", "peer": "src"]), 1, callee)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }

    /// A real Prometheus (Debian's) scrapes two proxies and sees their series.
    func testPrometheusScrapesTwoProxies() async throws {
        guard let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].first(where: FileManager.default.isExecutableFile) else {
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                return XCTFail("prometheus is missing; install Debian's prometheus package (.ci/run does)")
            }
            throw XCTSkip("prometheus not installed (apt-get install prometheus)")
        }
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let app = try await TestApp.start("api")
        let process = Process()
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { () -> Void in
                guard try await callThroughMesh(web.outbound, service: "api").status.code == 200 else { throw TestFailure("not yet") }
            }
            let port = try await FreePort.find()
            let config = mesh.directory.appendingPathComponent("prometheus.yml")
            try """
                global: {scrape_interval: 1s}
                scrape_configs:
                  - job_name: mesh-proxies
                    static_configs: [{targets: ["\(api.admin)", "\(web.admin)"]}]
                """.write(to: config, atomically: true, encoding: .utf8)
            process.executableURL = URL(fileURLWithPath: prometheus)
            process.arguments = ["--config.file=\(config.path)", "--storage.tsdb.path=\(mesh.directory.appendingPathComponent("tsdb").path)",
                                 "--web.listen-address=127.0.0.1:\(port)"]
            let log = mesh.directory.appendingPathComponent("prometheus.log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            let query = "/api/v1/query?query=sum%20by%20(instance,direction)(mesh_requests_total)"
            let result = try await eventually(timeout: .seconds(30), interval: .milliseconds(500)) { () -> String in
                let text = try await plainGet(HostPort(host: "127.0.0.1", port: port), query).text
                guard text.contains(#""direction":"inbound""#), text.contains(#""direction":"outbound""#),
                      text.contains(api.admin.description), text.contains(web.admin.description) else {
                    throw TestFailure("Prometheus has not scraped both proxies yet: \(text)")
                }
                return text
            }
            XCTAssertTrue(result.contains(#""status":"success""#), result)
            let targets = try await plainGet(HostPort(host: "127.0.0.1", port: port), "/api/v1/targets").text
            XCTAssertFalse(targets.contains(#""health":"down""#), targets)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        await app.stop()
        await mesh.shutdown()
    }
}

/// Reads samples out of Prometheus text exposition.
enum Exposition {
    /// The sum of every sample of `name` whose labels include `labels`.
    static func sum(_ text: String, _ name: String, _ labels: [String: String]) -> Double {
        var total = 0.0
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            guard let valueStart = line.lastIndex(of: " "), let value = Double(line[line.index(after: valueStart)...]) else { continue }
            let labelText = line.firstIndex(of: "{").flatMap { open in line.lastIndex(of: "}").map { String(line[line.index(after: open)..<$0]) } } ?? ""
            let matches = labels.allSatisfy { labelText.contains("\($0.key)=\"\($0.value)\"") }
            if matches { total += value }
        }
        return total
    }
}

/// A loopback port nobody listens on right now, for tools that cannot bind port 0 and say so.
enum FreePort {
    static func find() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress?.port ?? 0
        try await channel.close()
        return port
    }
}
