import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import NIOPosix
import XCTest

/// Raw TCP through the mesh: PostgreSQL's own client and server over mTLS with L4 policy,
/// protocol detection on `--upstream` ports, and server-first protocols that never hang.
final class OpaqueTCPTests: XCTestCase {
    private func requirePostgres() throws {
        try requireTool(PostgresServer.binDirectory != nil && PostgresServer.psql != nil,
                        "PostgreSQL with psql (apt-get install postgresql)")
    }

    func testPsqlThroughTheMeshWithL4Policy() async throws {
        try requirePostgres()
        let postgres = try await PostgresServer.start()
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        do {
            let db = try await mesh.proxy("db", app: postgres.address, extra: ["--app-protocol", "tcp"])
            let client = try await mesh.proxy("client", app: HostPort(host: "127.0.0.1", port: 9),
                                              extra: ["--upstream", "db=127.0.0.1:0"])
            let intruder = try await mesh.proxy("intruder", app: HostPort(host: "127.0.0.1", port: 9),
                                                extra: ["--upstream", "db=127.0.0.1:0"])
            // client may connect; intruder only has an L7 rule, which can never allow a raw
            // TCP stream (fail closed).
            let policy = mesh.directory.appendingPathComponent("db-policy.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: db-clients}
                spec:
                  selector: {service: db}
                  action: allow
                  rules:
                    - from: [{services: [client]}]
                    - from: [{services: [intruder]}]
                      to: [{methods: [GET]}]
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)

            let port = try XCTUnwrap(client.upstreams["db"])
            // The policy reaches db's proxy within a second; retry until then.
            let created = try await eventually(timeout: .seconds(10)) { () -> String in
                let result = try PostgresServer.psql("CREATE TABLE orders (id int, item text); INSERT INTO orders VALUES (42, 'book'); SELECT id || ':' || item FROM orders", at: port)
                guard result.status == 0 else { throw TestFailure("psql failed: \(result.err)") }
                return result.out
            }
            XCTAssertEqual(created.split(separator: "\n").last, "42:book", created)
            // A 4 MiB answer crosses both proxies intact (backpressure, no buffer limit hit).
            let query = "SELECT string_agg(md5(g::text), '' ORDER BY g) FROM generate_series(1, 131072) g"
            let large = try PostgresServer.psql(query, at: port)
            XCTAssertEqual(large.status, 0, large.err)
            let direct = try PostgresServer.psql(query, at: postgres.address)
            XCTAssertEqual(large.out.trimmingCharacters(in: .whitespacesAndNewlines).utf8.count, 4_194_304)
            XCTAssertTrue(large.out == direct.out, "the answer through the mesh differs from the direct one")

            // The intruder's stream is refused by db's proxy: psql sees the server go away.
            let refused = try PostgresServer.psql("SELECT 1", at: try XCTUnwrap(intruder.upstreams["db"]))
            XCTAssertNotEqual(refused.status, 0, refused.out)
            try await waitUntil { db.process.log.contains("TCP stream denied by policy") }
            XCTAssertTrue(db.process.log.contains("caller=spiffe://mesh.local/ns/default/sa/intruder"), db.process.log.suffix(3000).description)

            // A stream is authorized again when the policies change: revoking client's
            // permission ends its open session (PostgreSQL itself would wait a minute for it).
            let session = try RawTCPClient(port)
            try session.send(bytes: [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]) // SSLRequest
            XCTAssertEqual(session.receive(count: 1, timeout: .seconds(5)), "N", "the server answers through the mesh")

            // Metrics on both sides: streams opened and denied, bytes each way.
            let inbound = try await plainGet(db.admin, "/metrics").text
            XCTAssertTrue(inbound.contains(#"mesh_tcp_streams_total{direction="inbound",source_service="client",destination_service="db",outcome="opened"}"#), inbound)
            XCTAssertTrue(inbound.contains(#"mesh_tcp_streams_total{direction="inbound",source_service="intruder",destination_service="db",outcome="denied"}"#), inbound)
            let outbound = try await plainGet(client.admin, "/metrics").text
            let received = metricValue(outbound, #"mesh_tcp_stream_bytes_total{direction="outbound",source_service="client",destination_service="db",flow="from-destination"}"#)
            XCTAssertGreaterThan(received ?? 0, 4_194_304, outbound)

            let revoked = try await mesh.cli(["delete", "policy", "db-clients"])
            XCTAssertEqual(revoked.status, 0, revoked.err)
            XCTAssertTrue(session.closedByPeer(within: .seconds(5)), "a revoked permission closes the open stream")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
        postgres.stop()
    }

    /// Declared opaque services are relayed at once (their server speaks first); an HTTP
    /// service's port carries HTTP only, and refuses anything else without hanging.
    func testUpstreamPortsDetectHTTPAndNeverHangOnServerFirstProtocols() async throws {
        let mesh = try await TestMesh.start()
        let api = try await TestApp.start("api")
        let greeter = try await EchoServer.start(banner: "220 greeter ready\r\n")
        do {
            _ = try await mesh.proxy("api", app: api.address)
            // Declared opaque: callers relay at once.
            _ = try await mesh.proxy("smtp", app: greeter.address, extra: ["--app-protocol", "tcp"])
            // Not declared tcp: an HTTP service, whatever listens behind it.
            _ = try await mesh.proxy("legacy", app: greeter.address)
            let quick = try await mesh.proxy("quick", app: HostPort(host: "127.0.0.1", port: 9),
                                             extra: ["--upstream", "api=0", "--upstream", "legacy=0", "--detect-timeout", "300ms"])
            // A detection timeout far longer than the test waits: only skipping detection can pass.
            let patient = try await mesh.proxy("patient", app: HostPort(host: "127.0.0.1", port: 9),
                                               extra: ["--upstream", "smtp=0", "--detect-timeout", "60s"])
            try await waitUntil { (try? await mesh.services().count) == 5 }

            // HTTP on an upstream port is detected and routed to that port's service, whatever the Host.
            var client = APIClient(target: try XCTUnwrap(quick.upstreams["api"]), group: MultiThreadedEventLoopGroup.singleton, tls: nil)
            client.hostHeader = "anything.example"
            let response = try await eventually { try await client.get("/hello") }
            XCTAssertEqual(response.status.code, 200, response.text)
            XCTAssertEqual(api.requests.last?.path, "/hello")

            // Declared tcp: the server's greeting arrives without the client saying a word.
            let smtp = try RawTCPClient(try XCTUnwrap(patient.upstreams["smtp"]))
            XCTAssertEqual(smtp.receive(count: 19, timeout: .seconds(10)), "220 greeter ready\r\n")
            try smtp.send("HELO mesh\r\n")
            XCTAssertEqual(smtp.receive(count: 11, timeout: .seconds(5)), "HELO mesh\r\n")

            // timeouts.idle of the service's TrafficPolicy closes a stream that carries nothing.
            let idle = mesh.directory.appendingPathComponent("idle.yaml")
            try "kind: TrafficPolicy\nmetadata: {name: smtp}\nspec: {timeouts: {idle: 1s}}\n".write(to: idle, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", idle.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            try await Task.sleep(for: .milliseconds(500))
            let quiet = try RawTCPClient(try XCTUnwrap(patient.upstreams["smtp"]))
            XCTAssertEqual(quiet.receive(count: 19, timeout: .seconds(10)), "220 greeter ready\r\n")
            XCTAssertTrue(quiet.closedByPeer(within: .seconds(5)), "an idle stream is closed after timeouts.idle")
            XCTAssertFalse(smtp.closedByPeer(within: .milliseconds(10)), "streams opened before the change keep the old timeout")

            // An HTTP service's port: silence past the detection timeout is refused, never a
            // hang, and raw bytes never reach its app (they would skip every HTTP check).
            let legacy = try RawTCPClient(try XCTUnwrap(quick.upstreams["legacy"]))
            XCTAssertTrue(legacy.closedByPeer(within: .seconds(5)), "a silent client is refused after the detection timeout")
            let talker = try RawTCPClient(try XCTUnwrap(quick.upstreams["legacy"]))
            try talker.send("\r\nGET /admin HTTP/1.1\r\nHost: legacy\r\n\r\n")
            XCTAssertEqual(talker.receive(count: 19, timeout: .seconds(5)), "", "nothing of the app reaches a non-HTTP caller")
            XCTAssertTrue(talker.closedByPeer(within: .seconds(5)))
            XCTAssertTrue(quick.process.log.contains("connection refused: not HTTP, and the service speaks HTTP"), quick.process.log)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
        await api.stop()
        await greeter.stop()
    }

    /// A client that sends its request and then shuts down its sending side still gets the
    /// answer: the FIN crosses both proxies (as close_notify on the mTLS hop) while the other
    /// direction stays open, and the stream closes once both directions are done.
    func testHalfCloseIsCarriedThroughBothProxies() async throws {
        let mesh = try await TestMesh.start()
        let server = try await HalfCloseServer.start()
        do {
            _ = try await mesh.proxy("batch", app: server.address, extra: ["--app-protocol", "tcp"])
            let client = try await mesh.proxy("client", app: HostPort(host: "127.0.0.1", port: 9), extra: ["--upstream", "batch=0"])
            try await waitUntil { (try? await mesh.services().count) == 2 }
            let port = try XCTUnwrap(client.upstreams["batch"])
            let payload = String(repeating: "0123456789abcdef", count: 20_000)
            let answer = try await eventually { () async throws -> String in
                let connection = try RawTCPClient(port)
                try connection.send(payload)
                connection.shutdownWrite()
                let text = connection.receive(count: 64, timeout: .seconds(10))
                guard !text.isEmpty else { throw TestFailure("no answer after the half-close") }
                XCTAssertTrue(connection.closedByPeer(within: .seconds(5)), "closed once both directions are done")
                return text
            }
            XCTAssertEqual(answer, "received 320000 bytes\n")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
        await server.stop()
    }

    private func metricValue(_ exposition: String, _ series: String) -> Double? {
        exposition.split(separator: "\n").first { $0.hasPrefix(series + " ") }
            .flatMap { Double($0.split(separator: " ").last ?? "") }
    }
}
