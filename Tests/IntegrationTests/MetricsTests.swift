import Foundation
import MeshCore
import MeshTesting
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
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await callThroughMesh(web.outbound, service: "api")   // denied: 403
            _ = try await callThroughMesh(web.outbound, service: "nosuch") // 503 locally
            let exposition = try await plainGet(api.admin, "/metrics").text
            XCTAssertTrue(exposition.contains("mesh_policy_decisions_total"), exposition)

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
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
