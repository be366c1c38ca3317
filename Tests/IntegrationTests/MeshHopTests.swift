import Foundation
import MeshCore
import MeshTesting
import XCTest

/// The walking skeleton's promise: a request crosses the mesh encrypted and authenticated,
/// and the app learns who called.
final class MeshHopTests: XCTestCase {
    func testRequestCrossesTheMeshAndTheAppSeesTheCallerIdentity() async throws {
        let mesh = try await TestMesh.start()
        let api = try await TestApp.start("api")
        do {
            _ = try await mesh.proxy("api", app: api.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))

            let response = try await eventually { try await callThroughMesh(web.outbound, service: "api", path: "/hello") }
            XCTAssertEqual(response.status.code, 200)
            XCTAssertEqual(response.text, "hello from api\n")
            let seen = try XCTUnwrap(api.requests.last)
            XCTAssertEqual(seen.path, "/hello")
            XCTAssertEqual(seen.header("x-mesh-peer-identity"), ["spiffe://mesh.local/ns/default/sa/web"])

            // A forged identity header from the caller is replaced, never passed on.
            var client = APIClientFactory.outbound(web.outbound, service: "api")
            client.extraHeaders = [("x-mesh-peer-identity", "spiffe://mesh.local/ns/default/sa/admin")]
            let forged = try await client.get("/forged")
            XCTAssertEqual(forged.status.code, 200)
            XCTAssertEqual(api.requests.last?.header("x-mesh-peer-identity"), ["spiffe://mesh.local/ns/default/sa/web"])

            // Host with a port resolves the same service.
            let withPort = try await callThroughMesh(web.outbound, service: "api:8080", path: "/port")
            XCTAssertEqual(withPort.status.code, 200)

            // A head far larger than the sidecars' first estimate of it (a long bearer token,
            // as callers in a mesh carry) is written again with the room it needs, and arrives
            // whole, the fields after it too.
            var tokenClient = APIClientFactory.outbound(web.outbound, service: "api")
            let token = "Bearer " + String(repeating: "t0K", count: 3_000)
            tokenClient.extraHeaders = [("authorization", token), ("x-after-token", "kept")]
            let withToken = try await tokenClient.get("/token")
            XCTAssertEqual(withToken.status.code, 200)
            XCTAssertEqual(api.requests.last?.path, "/token")
            XCTAssertEqual(api.requests.last?.header("authorization"), [token])
            XCTAssertEqual(api.requests.last?.header("x-after-token"), ["kept"])
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await api.stop()
        await mesh.shutdown()
    }

    func testUnknownServiceAndMissingEndpointsAnswer503WithAReason() async throws {
        let mesh = try await TestMesh.start()
        do {
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let unknown = try await callThroughMesh(web.outbound, service: "nosuch")
            XCTAssertEqual(unknown.status.code, 503)
            XCTAssertTrue(unknown.text.contains("unknown service 'nosuch'"), unknown.text)

            let invalid = try await callThroughMesh(web.outbound, service: "Not_A_Service")
            XCTAssertEqual(invalid.status.code, 503)

            // A known service whose only instance left: "no endpoints", not "unknown".
            let app = try await TestApp.start("api")
            let api = try await mesh.proxy("api", app: app.address)
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "api") }
            await api.process.stop(signal: SIGTERM)
            let empty = try await eventually {
                let response = try await callThroughMesh(web.outbound, service: "api")
                guard response.status.code == 503 else { throw TestFailure("still routed: \(response.status)") }
                return response
            }
            XCTAssertTrue(empty.text.contains("service 'api' has no endpoints"), empty.text)
            await app.stop()
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testProxyReportsReadinessAndLiveness() async throws {
        let mesh = try await TestMesh.start()
        do {
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            let ready = try await plainGet(web.admin, "/ready")
            XCTAssertEqual(ready.status.code, 200)
            let live = try await plainGet(web.admin, "/live")
            XCTAssertEqual(live.status.code, 200)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }
}
