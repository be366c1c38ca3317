import Foundation
import MeshCore
import MeshIdentity
import MeshTesting
import MeshTransport
import NIOCore
import NIOPosix
import XCTest

/// Bad input gets a clear error and changes nothing stored.
final class BadInputTests: XCTestCase {
    func testJoinRefusesBadCSRsAndBadTokensAndStoresNothing() async throws {
        let mesh = try await TestMesh.start()
        do {
            let client = try mesh.unjoinedProxyClient()
            let goodCSR = try WorkloadKey().csrPEM(service: ServiceName("api"))
            let token = try await mesh.token(for: "api")

            // A malformed CSR is refused and does not burn the token.
            for csr in ["", "not a csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                        String(repeating: "A", count: 20000)] {
                let response = try await client.send(.POST, ControlAPI.joinPath, json: ControlAPI.JoinRequest(token: token, csrPEM: csr))
                XCTAssertEqual(response.status.code, 400, response.text)
                XCTAssertTrue(response.text.contains("invalid-csr"), response.text)
            }
            // A CSR whose signature does not match its key (proof of possession fails).
            let tampered = try tamperedCSR()
            let badSignature = try await client.send(.POST, ControlAPI.joinPath, json: ControlAPI.JoinRequest(token: token, csrPEM: tampered))
            XCTAssertEqual(badSignature.status.code, 400, badSignature.text)

            // Not JSON at all.
            var raw = client
            raw.extraHeaders = []
            let garbage = try await raw.send(.POST, ControlAPI.joinPath, json: "{{{")
            XCTAssertEqual(garbage.status.code, 400, garbage.text)

            // The token still works once, then is spent.
            let joined = try await client.send(.POST, ControlAPI.joinPath, json: ControlAPI.JoinRequest(token: token, csrPEM: goodCSR))
            let certificate = try joined.decode(ControlAPI.CertificateResponse.self)
            XCTAssertEqual(certificate.spiffeID, "spiffe://mesh.local/ns/default/sa/api")
            let reused = try await client.send(.POST, ControlAPI.joinPath, json: ControlAPI.JoinRequest(token: token, csrPEM: goodCSR))
            XCTAssertEqual(reused.status.code, 401)
            XCTAssertTrue(reused.text.contains("token-used"), reused.text)

            let unknown = try await client.send(.POST, ControlAPI.joinPath,
                                                json: ControlAPI.JoinRequest(token: "mjt_doesnotexist", csrPEM: goodCSR))
            XCTAssertEqual(unknown.status.code, 401)
            XCTAssertTrue(unknown.text.contains("token-unknown"), unknown.text)

            let shortLived = try await mesh.token(for: "api", ttl: "1s")
            try await Task.sleep(for: .milliseconds(1300))
            let expired = try await client.send(.POST, ControlAPI.joinPath,
                                                json: ControlAPI.JoinRequest(token: shortLived, csrPEM: goodCSR))
            XCTAssertEqual(expired.status.code, 401)
            XCTAssertTrue(expired.text.contains("token-expired"), expired.text)

            // Without an SVID, nothing but join is allowed.
            let register = try await client.send(.POST, ControlAPI.registerPath, json: ControlAPI.RegisterRequest(
                instanceID: "x", address: "127.0.0.1", inboundPort: 1, labels: Labels(), certificateExpiry: nil))
            XCTAssertEqual(register.status.code, 401, register.text)

            // Nothing was registered by any of this.
            let services = try await mesh.services()
            XCTAssertEqual(services.count, 0, "\(services)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testGarbageOnTheProxyAPIPortIsDroppedAndTheControlPlaneKeepsServing() async throws {
        let mesh = try await TestMesh.start()
        do {
            for payload in [Array("GET / HTTP/1.1\r\n\r\n".utf8), (0..<4096).map { _ in UInt8.random(in: 0...255) },
                            [0x16, 0x03, 0x01, 0xFF, 0xFF] + Array(repeating: 0, count: 100)] {
                let outcome = try await RawSocket.send(payload, to: mesh.listen)
                XCTAssertFalse(outcome.hasPrefix("HTTP/"), "garbage got an HTTP answer: \(outcome)")
            }
            let outcome = try await TLSProbe.plaintext(mesh.listen)
            XCTAssertEqual(outcome, .closedWithoutResponse)
            // Still alive and serving.
            let token = try await mesh.token(for: "api")
            XCTAssertTrue(token.hasPrefix("mjt_"))
            XCTAssertTrue(mesh.control.process.isRunning)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testAdminAPIRequiresTheAdminToken() async throws {
        let mesh = try await TestMesh.start()
        do {
            let anonymous = APIClient(target: mesh.admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
            let response = try await anonymous.get(AdminAPI.servicesPath)
            XCTAssertEqual(response.status.code, 401)
            XCTAssertTrue(response.text.contains("admin.token"), response.text)
            let wrong = APIClient(target: mesh.admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil,
                                  bearerToken: "mat_" + String(repeating: "0", count: 64))
            let tokenResponse = try await wrong.send(.POST, AdminAPI.tokensPath,
                                                     json: AdminAPI.CreateTokenRequest(service: try ServiceName("api"), ttlSeconds: 60))
            XCTAssertEqual(tokenResponse.status.code, 401)
            let attributes = try FileManager.default.attributesOfItem(atPath: mesh.dataDir.appendingPathComponent("admin.token").path)
            XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
            let keyAttributes = try FileManager.default.attributesOfItem(atPath: mesh.dataDir.appendingPathComponent("ca.key").path)
            XCTAssertEqual((keyAttributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    func testCommandLineErrorsAreClear() async throws {
        let mesh = try await TestMesh.start()
        do {
            let base = ["proxy", "--service", "api", "--app", "127.0.0.1:9", "--inbound", "127.0.0.1:0",
                        "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--control", mesh.listen.description]
            let unknownFlag = try await MeshProcess.runToEnd(base + ["--ca-file", mesh.caFile.path, "--token", "mjt_x", "--bogus"])
            XCTAssertNotEqual(unknownFlag.status, 0)
            XCTAssertTrue(unknownFlag.err.contains("Unknown option '--bogus'"), unknownFlag.err)

            let missingCA = try await MeshProcess.runToEnd(base + ["--ca-file", "/nonexistent/ca.pem", "--token", "mjt_x"])
            XCTAssertNotEqual(missingCA.status, 0)
            XCTAssertTrue(missingCA.err.contains("/nonexistent/ca.pem"), missingCA.err)

            let missingToken = try await MeshProcess.runToEnd(base + ["--ca-file", mesh.caFile.path, "--token-file", "/nonexistent/t"])
            XCTAssertNotEqual(missingToken.status, 0)
            XCTAssertTrue(missingToken.err.contains("/nonexistent/t"), missingToken.err)

            let noToken = try await MeshProcess.runToEnd(base + ["--ca-file", mesh.caFile.path])
            XCTAssertNotEqual(noToken.status, 0)
            XCTAssertTrue(noToken.err.contains("--token"), noToken.err)

            let badToken = try await MeshProcess.runToEnd(base + ["--ca-file", mesh.caFile.path, "--token", "mjt_wrong"])
            XCTAssertNotEqual(badToken.status, 0)
            XCTAssertTrue(badToken.err.contains("join token is unknown"), badToken.err)

            let notABundle = mesh.directory.appendingPathComponent("junk.pem")
            try "hello".write(to: notABundle, atomically: true, encoding: .utf8)
            let junkCA = try await MeshProcess.runToEnd(base + ["--ca-file", notABundle.path, "--token", "mjt_x"])
            XCTAssertNotEqual(junkCA.status, 0)
            XCTAssertTrue(junkCA.err.contains("trust bundle"), junkCA.err)

            let badAddress = try await MeshProcess.runToEnd(["control", "--data-dir", mesh.directory.path + "/other", "--listen", "nowhere"])
            XCTAssertNotEqual(badAddress.status, 0)
            XCTAssertTrue(badAddress.err.contains("--listen"), badAddress.err)

            let badService = try await MeshProcess.runToEnd(["token", "create", "--service", "Bad_Name", "--admin", mesh.admin.description,
                                                             "--data-dir", mesh.dataDir.path])
            XCTAssertNotEqual(badService.status, 0)
            XCTAssertTrue(badService.err.contains("lowercase"), badService.err)

            let services = try await mesh.services()
            XCTAssertEqual(services.count, 0, "a failed command registered something: \(services)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await mesh.shutdown()
    }

    /// A CSR whose signed body was altered after signing.
    private func tamperedCSR() throws -> String {
        let pem = try WorkloadKey().csrPEM(service: ServiceName("api"))
        let document = try PEMDocument(pemString: pem)
        var der = document.derBytes
        // Flip a byte inside the subject (CN "api"), leaving the structure intact.
        if let index = der.firstIndex(of: UInt8(ascii: "a")) { der[index] = UInt8(ascii: "b") }
        return PEMDocument(type: "CERTIFICATE REQUEST", derBytes: der).pemString + "\n"
    }
}

import SwiftASN1

/// Sends raw bytes and returns what came back before the server closed (5 s at most).
enum RawSocket {
    static func send(_ bytes: [UInt8], to target: HostPort) async throws -> String {
        try await send([bytes], pause: .zero, to: target)
    }

    /// Sends `pieces` one after another, `pause` apart (each its own TCP write).
    static func send(_ pieces: [[UInt8]], pause: Duration, to target: HostPort) async throws -> String {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            for (index, piece) in pieces.enumerated() {
                if index > 0 { try await Task.sleep(for: pause) }
                try await outbound.write(ByteBuffer(bytes: piece))
            }
            var received = ByteBuffer()
            let deadline = ContinuousClock.now + .seconds(5)
            // A proxy that never closes fails the test's assertions instead of hanging it.
            let watchdog = Task {
                try await Task.sleep(until: deadline)
                channel.channel.close(promise: nil)
            }
            defer { watchdog.cancel() }
            do {
                for try await var chunk in inbound {
                    received.writeBuffer(&chunk)
                    if ContinuousClock.now > deadline { break }
                }
            } catch {
                // A reset is as good as a close here.
            }
            return String(decoding: received.readableBytesView, as: UTF8.self)
        }
    }
}
