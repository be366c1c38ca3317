import Foundation
import MeshCore
import MeshTesting
import X509
import XCTest

/// Standalone mode: identity from the user's own PKI in PEM files, endpoints from the file.
final class StaticModeTests: XCTestCase {
    private var directory: URL!

    override func setUp() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-static-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() async throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func write(_ text: String, _ name: String) throws {
        try text.write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
    }

    /// An enterprise-style CA and one SVID per service, written as PEM files.
    private func issue(_ services: [String]) throws {
        let ca = try CertificateFactory.otherCA(trustDomain: "corp.example")
        try write(try ca.certificate.serializeAsPEM().pemString + "\n", "ca.pem")
        for service in services {
            let leaf = try CertificateFactory.leaf(issuer: ca, uris: ["spiffe://corp.example/ns/default/sa/\(service)"])
            try write(leaf.chainPEM, "\(service).pem")
            try write(leaf.keyPEM, "\(service)-key.pem")
        }
    }

    private func config(service: String, app: HostPort, certificate: String? = nil, services: [String: [HostPort]] = [:],
                        allow: String? = nil, extra: String = "") -> String {
        var text = """
            service: \(service)
            app: \(app)
            inbound: 127.0.0.1:0
            outbound: 127.0.0.1:0
            admin: 127.0.0.1:0
            tls:
              certificate: \(certificate ?? service).pem
              key: \(certificate ?? service)-key.pem
              bundle: ca.pem
            """
        if let allow {
            text += "\npolicies:\n  - kind: AuthorizationPolicy\n    metadata: {name: allow-\(allow)}\n    spec:\n      rules:\n        - from: [{services: [\(allow)]}]"
        }
        if !services.isEmpty {
            text += "\nservices:\n" + services.map { "  \($0.key): [\($0.value.map(\.description).joined(separator: ", "))]" }.joined(separator: "\n")
        }
        return text + "\n" + extra
    }

    func testTwoStandaloneProxiesCarryARequestWithTheirOwnPKI() async throws {
        try issue(["web", "api"])
        let app = try await TestApp.start("api")
        var processes: [MeshProcess] = []
        do {
            try write(config(service: "api", app: app.address, allow: "web"), "api.yaml")
            let api = try MeshProcess(["proxy", "--config", directory.appendingPathComponent("api.yaml").path], logDirectory: directory)
            processes.append(api)
            let apiFields = try await api.waitForLine(prefix: "mesh proxy ready:")
            let apiInbound = try HostPort(parsing: apiFields["inbound"] ?? "")

            // TrafficPolicy works without a control plane too: api gets a 300 ms request timeout.
            let traffic = "trafficPolicies:\n  - kind: TrafficPolicy\n    metadata: {name: api}\n    spec: {timeouts: {request: 300ms}}\n"
            try write(config(service: "web", app: HostPort(host: "127.0.0.1", port: 9), services: ["api": [apiInbound]], extra: traffic),
                      "web.yaml")
            let web = try MeshProcess(["proxy", "--config", directory.appendingPathComponent("web.yaml").path], logDirectory: directory)
            processes.append(web)
            let webFields = try await web.waitForLine(prefix: "mesh proxy ready:")
            let outbound = try HostPort(parsing: webFields["outbound"] ?? "")

            let response = try await callThroughMesh(outbound, service: "api", path: "/static")
            XCTAssertEqual(response.status.code, 200, response.text)
            XCTAssertEqual(app.requests.last?.header("x-mesh-peer-identity"), ["spiffe://corp.example/ns/default/sa/web"])
            let slow = try await callThroughMesh(outbound, service: "api", path: "/slow")
            XCTAssertEqual(slow.status.code, 504, slow.text)
            XCTAssertEqual(slow.headers.first(name: "x-mesh-error"), "request-timeout")
            let unknown = try await callThroughMesh(outbound, service: "billing")
            XCTAssertEqual(unknown.status.code, 503)
        } catch {
            XCTFail("\(error)\n\(processes.map(\.log).joined(separator: "\n"))")
        }
        for process in processes { await process.stop() }
        await app.stop()
    }

    /// An external rotator renews the SVID under a running proxy the way a mounted Kubernetes
    /// secret changes: the files are symlinks into a versioned directory whose link is swapped
    /// in one rename. The proxy loads the new identity at its next look (every 5 s), and calls
    /// go on. (The check used to read the links' own dates, which a swap leaves alone.)
    func testAnIdentityRotatedBySwappingSymlinksIsLoaded() async throws {
        let ca = try CertificateFactory.otherCA(trustDomain: "corp.example")
        try write(try ca.certificate.serializeAsPEM().pemString + "\n", "ca.pem")
        let web = try CertificateFactory.leaf(issuer: ca, uris: ["spiffe://corp.example/ns/default/sa/web"])
        try write(web.chainPEM, "web.pem")
        try write(web.keyPEM, "web-key.pem")
        // Whole seconds: the log prints the certificate's expiry as read back from it.
        let firstExpiry = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + 3600).rounded(.down))
        let secondExpiry = firstExpiry.addingTimeInterval(3600)
        func version(_ name: String, expiring: Date) throws {
            try FileManager.default.createDirectory(at: directory.appendingPathComponent(name), withIntermediateDirectories: true)
            let leaf = try CertificateFactory.leaf(issuer: ca, uris: ["spiffe://corp.example/ns/default/sa/api"], notAfter: expiring)
            try write(leaf.chainPEM, "\(name)/api.pem")
            try write(leaf.keyPEM, "\(name)/api-key.pem")
        }
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        try version("v1", expiring: firstExpiry)
        try FileManager.default.createSymbolicLink(atPath: path("..data"), withDestinationPath: "v1")
        try FileManager.default.createSymbolicLink(atPath: path("api.pem"), withDestinationPath: "..data/api.pem")
        try FileManager.default.createSymbolicLink(atPath: path("api-key.pem"), withDestinationPath: "..data/api-key.pem")

        let app = try await TestApp.start("api")
        var processes: [MeshProcess] = []
        do {
            try write(config(service: "api", app: app.address, allow: "web"), "api.yaml")
            let api = try MeshProcess(["proxy", "--config", path("api.yaml")], logDirectory: directory)
            processes.append(api)
            let apiInbound = try HostPort(parsing: try await api.waitForLine(prefix: "mesh proxy ready:")["inbound"] ?? "")
            try write(config(service: "web", app: HostPort(host: "127.0.0.1", port: 9), services: ["api": [apiInbound]]), "web.yaml")
            let webProxy = try MeshProcess(["proxy", "--config", path("web.yaml")], logDirectory: directory)
            processes.append(webProxy)
            let outbound = try HostPort(parsing: try await webProxy.waitForLine(prefix: "mesh proxy ready:")["outbound"] ?? "")
            let before = try await callThroughMesh(outbound, service: "api", path: "/before")
            XCTAssertEqual(before.status.code, 200, before.text)

            try version("v2", expiring: secondExpiry)
            try FileManager.default.createSymbolicLink(atPath: path("..data.new"), withDestinationPath: "v2")
            XCTAssertEqual(rename(path("..data.new"), path("..data")), 0, "swapping the link")
            let deadline = ContinuousClock.now + .seconds(20)
            while !api.log.contains("not_after=\(secondExpiry)"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            XCTAssertTrue(api.log.contains("static identity reloaded"), api.log)
            XCTAssertTrue(api.log.contains("not_after=\(secondExpiry)"), "the new certificate (expiring \(secondExpiry)):\n\(api.log)")
            let after = try await callThroughMesh(outbound, service: "api", path: "/after")
            XCTAssertEqual(after.status.code, 200, after.text)
        } catch {
            XCTFail("\(error)\n\(processes.map(\.log).joined(separator: "\n"))")
        }
        for process in processes { await process.stop() }
        await app.stop()
    }

    func testBadStaticConfigurationsFailWithAClearMessage() async throws {
        try issue(["web", "api"])
        let app = HostPort(host: "127.0.0.1", port: 9)
        // The api proxy given web's certificate: identity and service disagree.
        try write(config(service: "api", app: app, certificate: "web"), "mismatch.yaml")
        let mismatch = try await MeshProcess.runToEnd(["proxy", "--config", directory.appendingPathComponent("mismatch.yaml").path])
        XCTAssertNotEqual(mismatch.status, 0)
        XCTAssertTrue(mismatch.err.contains("not the workload identity of service 'api'"), mismatch.err)

        try write("service: api\napp: nowhere\n", "broken.yaml")
        let broken = try await MeshProcess.runToEnd(["proxy", "--config", directory.appendingPathComponent("broken.yaml").path])
        XCTAssertNotEqual(broken.status, 0)
        XCTAssertTrue(broken.err.contains("missing field 'inbound'") || broken.err.contains("missing field"), broken.err)

        try write(config(service: "api", app: app).replacingOccurrences(of: "inbound: 127.0.0.1:0", with: "inbound: nowhere"), "address.yaml")
        let address = try await MeshProcess.runToEnd(["proxy", "--config", directory.appendingPathComponent("address.yaml").path])
        XCTAssertNotEqual(address.status, 0)
        XCTAssertTrue(address.err.contains("field 'inbound'"), address.err)

        try write("service: [unclosed\n", "yaml.yaml")
        let yaml = try await MeshProcess.runToEnd(["proxy", "--config", directory.appendingPathComponent("yaml.yaml").path])
        XCTAssertNotEqual(yaml.status, 0)
        XCTAssertTrue(yaml.err.contains("yaml.yaml"), yaml.err)

        let both = try await MeshProcess.runToEnd(["proxy", "--config", "x.yaml", "--control", "127.0.0.1:1"])
        XCTAssertNotEqual(both.status, 0)
        XCTAssertTrue(both.err.contains("without a control plane"), both.err)
    }
}
