import Foundation
import MeshCore
import MeshTesting
import XCTest

/// WebSocket through both proxies: the upgrade is authorized and routed like a request, then
/// frames flow both ways over the mTLS hop, including one the server sends with its 101.
final class WebSocketTests: XCTestCase {
    func testWebSocketPassesThroughBothProxies() async throws {
        let mesh = try await TestMesh.start()
        let server = try await WebSocketEchoServer.start()
        do {
            _ = try await mesh.proxy("chat", app: server.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "chat", path: "/plain") }

            let client = try RawTCPClient(web.outbound)
            try client.send(WebSocketClient.handshake(path: "/socket", host: "chat"))
            let (head, rest) = client.receiveHead(timeout: .seconds(10))
            XCTAssertTrue(head.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), head)
            let lower = head.lowercased()
            XCTAssertTrue(lower.contains("upgrade: websocket\r\n") && lower.contains("connection: upgrade\r\n"), head)
            // The server's answer to the RFC 6455 sample key arrives untouched.
            XCTAssertTrue(lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), head)

            // The greeting the server sent right after its 101.
            let hello = WebSocketClient.serverTextFrame("hello")
            let greeting = rest + client.receiveBytes(count: hello.count - rest.count, timeout: .seconds(5))
            XCTAssertEqual(greeting, hello)
            for i in 1...20 {
                try client.send(bytes: WebSocketClient.textFrame("ping \(i)"))
                let expected = WebSocketClient.serverTextFrame("echo: ping \(i)")
                XCTAssertEqual(client.receiveBytes(count: expected.count, timeout: .seconds(5)), expected, "message \(i)")
            }
            // A close frame: the server answers and closes, and the close crosses both proxies.
            try client.send(bytes: [0x88, 0x80, 1, 2, 3, 4])
            XCTAssertEqual(client.receiveBytes(count: 2, timeout: .seconds(5)), [0x88, 0x00])
            XCTAssertTrue(client.closedByPeer(within: .seconds(5)), "the server's close reaches the client")

            // A refused upgrade is an ordinary answer, after which the connection closes.
            let refused = try RawTCPClient(web.outbound)
            try refused.send(WebSocketClient.handshake(path: "/refuse", host: "chat"))
            let (refusal, _) = refused.receiveHead(timeout: .seconds(10))
            XCTAssertTrue(refusal.hasPrefix("HTTP/1.1 403"), refusal)
            XCTAssertTrue(refused.closedByPeer(within: .seconds(5)), "a connection whose upgrade failed is closed")

            // An upgrade request with a body is refused: body and frames would be mixed.
            let withBody = try RawTCPClient(web.outbound)
            try withBody.send(WebSocketClient.handshake(path: "/socket", host: "chat")
                .replacingOccurrences(of: "\r\n\r\n", with: "\r\nContent-Length: 4\r\n\r\nbody"))
            let (bodyRefusal, _) = withBody.receiveHead(timeout: .seconds(10))
            XCTAssertTrue(bodyRefusal.hasPrefix("HTTP/1.1 400"), bodyRefusal)
            XCTAssertTrue(bodyRefusal.lowercased().contains("x-mesh-error: bad-upgrade"), bodyRefusal)

            // Plain HTTP to the same service keeps working on its own connections.
            let plain = try await callThroughMesh(web.outbound, service: "chat", path: "/plain")
            XCTAssertEqual(plain.status.code, 403)
            XCTAssertEqual(plain.text, "no websocket here\n")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await server.stop()
        await mesh.shutdown()
    }

    /// An app that switches protocols on a plain request (no upgrade was asked) gets a 502 to
    /// the caller, once, and the connections stay usable: the next request on the same
    /// connection is answered (the proxy does not wait for a request end that came already),
    /// and the request was not sent again when the proxy closed the app's connection.
    func testASwitchNobodyAskedForIsA502AndTheConnectionGoesOn() async throws {
        let mesh = try await TestMesh.start()
        let server = try await WebSocketEchoServer.start()
        do {
            _ = try await mesh.proxy("chat", app: server.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            // The app closes this connection: each rogue request below is on a new one.
            _ = try await eventually { try await callThroughMesh(web.outbound, service: "chat", path: "/bye") }

            let client = try RawTCPClient(web.outbound)
            for round in 1...2 {
                try client.send("GET /rogue-101 HTTP/1.1\r\nHost: chat\r\n\r\n")
                let (head, rest) = client.receiveHead(timeout: .seconds(10))
                XCTAssertTrue(head.hasPrefix("HTTP/1.1 502"), "round \(round): \(head)")
                XCTAssertTrue(head.lowercased().contains("x-mesh-error: bad-upgrade"), "round \(round): \(head)")
                let length = head.lowercased().components(separatedBy: "\r\n")
                    .first { $0.hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                _ = client.receiveBytes(count: length - rest.count, timeout: .seconds(5))
            }
            try client.send("GET /plain HTTP/1.1\r\nHost: chat\r\n\r\n")
            let (plain, _) = client.receiveHead(timeout: .seconds(10))
            XCTAssertTrue(plain.hasPrefix("HTTP/1.1 403"), "the app's own answer, on the same connection: \(plain)")
            XCTAssertEqual(server.rogueRequests, 2, "each request reached the app once: not replayed after the proxy closed the connection")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await server.stop()
        await mesh.shutdown()
    }

    /// A WebSocket is authorized when it opens and again whenever the policies change: once
    /// the permission is revoked, the open socket is closed (as a TCP stream would be).
    func testRevokingThePermissionClosesAnOpenWebSocket() async throws {
        let mesh = try await TestMesh.start(defaultPolicy: "deny")
        let server = try await WebSocketEchoServer.start()
        do {
            let policy = mesh.directory.appendingPathComponent("chat.yaml")
            try """
                kind: AuthorizationPolicy
                metadata: {name: web-chats}
                spec:
                  selector: {service: chat}
                  action: allow
                  rules: [{from: [{services: [web]}], to: [{methods: [GET], paths: [/socket]}]}]
                ---
                kind: AuthorizationPolicy
                metadata: {name: web-plain}
                spec:
                  selector: {service: chat}
                  action: allow
                  rules: [{from: [{services: [web]}], to: [{paths: [/plain]}]}]
                """.write(to: policy, atomically: true, encoding: .utf8)
            let applied = try await mesh.cli(["apply", "-f", policy.path])
            XCTAssertEqual(applied.status, 0, applied.err)
            _ = try await mesh.proxy("chat", app: server.address)
            let web = try await mesh.proxy("web", app: HostPort(host: "127.0.0.1", port: 9))
            _ = try await eventually { () async throws -> Void in
                let answer = try await callThroughMesh(web.outbound, service: "chat", path: "/plain")
                guard answer.text == "no websocket here\n" else { throw TestFailure("not allowed yet: \(answer.status)") }
            }

            let client = try RawTCPClient(web.outbound)
            try client.send(WebSocketClient.handshake(path: "/socket", host: "chat"))
            let (head, rest) = client.receiveHead(timeout: .seconds(10))
            XCTAssertTrue(head.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), head)
            let hello = WebSocketClient.serverTextFrame("hello")
            XCTAssertEqual(rest + client.receiveBytes(count: hello.count - rest.count, timeout: .seconds(5)), hello)

            // An unrelated change: the socket stays and works.
            let unrelated = try await mesh.cli(["delete", "policy", "web-plain"])
            XCTAssertEqual(unrelated.status, 0, unrelated.err)
            try await Task.sleep(for: .seconds(1))
            try client.send(bytes: WebSocketClient.textFrame("still here"))
            let echo = WebSocketClient.serverTextFrame("echo: still here")
            XCTAssertEqual(client.receiveBytes(count: echo.count, timeout: .seconds(5)), echo)

            let revoked = try await mesh.cli(["delete", "policy", "web-chats"])
            XCTAssertEqual(revoked.status, 0, revoked.err)
            XCTAssertTrue(client.closedByPeer(within: .seconds(5)), "a revoked permission closes the open WebSocket")
            let chatLog = mesh.proxies.first?.log ?? ""
            XCTAssertTrue(chatLog.contains("request denied by policy") && chatLog.contains("path=/socket"), chatLog)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await server.stop()
        await mesh.shutdown()
    }
}
