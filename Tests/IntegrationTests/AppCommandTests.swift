import Foundation
import MeshCore
import MeshTesting
import XCTest

/// `mesh proxy … -- CMD ARGS`: the app starts only once the proxy is ready, the proxy exits
/// with the app's code (jobs end), and stopping the proxy stops the app.
final class AppCommandTests: XCTestCase {
    func testTheAppStartsWhenTheProxyIsReadyAndItsExitCodeIsTheProxys() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        do {
            // The job checks its proxy's /ready first thing: 7 if it was ready, 1 if not.
            let job = ["python3", "-c",
                       "import os, sys, urllib.request\n"
                       + "ready = urllib.request.urlopen('http://' + os.environ['MESH_ADMIN'] + '/ready').status == 200\n"
                       + "sys.exit(7 if ready and os.environ['MESH_SERVICE'] == 'job' and os.environ['MESH_OUTBOUND'] else 1)"]
            let proxy = try await mesh.proxy("job", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--"] + job)
            try await waitUntil(timeout: .seconds(20)) { !proxy.process.process.isRunning }
            XCTAssertEqual(proxy.process.process.terminationStatus, 7, proxy.process.log.suffix(2000).description)
            // It left the mesh on the way out.
            try await waitUntil(timeout: .seconds(10)) {
                ((try? await mesh.services()) ?? []).first { $0.service.rawValue == "job" }?.instances.isEmpty ?? true
            }
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testStoppingTheProxyStopsTheApp() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        do {
            let marker = mesh.directory.appendingPathComponent("app.pid")
            let app = ["sh", "-c", "echo $$ > \(marker.path); exec sleep 60"]
            let proxy = try await mesh.proxy("worker", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--"] + app)
            try await waitUntil(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: marker.path) }
            let pid = try XCTUnwrap(Int32(String(contentsOf: marker, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            let started = ContinuousClock.now
            let status = await proxy.process.stop(signal: SIGTERM, timeout: .seconds(15))
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(12), "the proxy stopped the app and drained")
            XCTAssertEqual(status, 128 + SIGTERM, "the app ended by SIGTERM; the proxy exits with its code")
            XCTAssertNotEqual(kill(pid, 0), 0, "the app is gone")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }
}
