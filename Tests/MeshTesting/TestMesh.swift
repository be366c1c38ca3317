import Foundation
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import NIOPosix

/// A control plane and its sidecars, all real processes on loopback with port 0.
/// Tests read like stories: `let mesh = try await TestMesh.start(); let api = try await mesh.proxy("api", app: ...)`.
public final class TestMesh: @unchecked Sendable {
    public let directory: URL
    public let dataDir: URL
    public private(set) var control: MeshProcess
    public private(set) var listen: HostPort
    public private(set) var admin: HostPort
    public let controlArguments: [String]
    public var proxies: [MeshProcess] = []

    /// - Parameter defaultPolicy: `audit` lets tests that are not about policy run without
    ///   writing policies; policy tests pass `deny`, the production default.
    public static func start(svidTTL: String = "24h", heartbeatTTL: String = "2s", defaultPolicy: String = "audit",
                             extra: [String] = []) async throws -> TestMesh {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let dataDir = directory.appendingPathComponent("data")
        let arguments = ["control", "--data-dir", dataDir.path, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                         "--svid-ttl", svidTTL, "--heartbeat-ttl", heartbeatTTL, "--default-policy", defaultPolicy] + extra
        let control = try MeshProcess(arguments, logDirectory: directory)
        let fields = try await control.waitForLine(prefix: "mesh control ready:")
        return TestMesh(directory: directory, dataDir: dataDir, control: control,
                        listen: try HostPort(parsing: fields["listen"] ?? ""), admin: try HostPort(parsing: fields["admin"] ?? ""),
                        controlArguments: arguments)
    }

    private init(directory: URL, dataDir: URL, control: MeshProcess, listen: HostPort, admin: HostPort, controlArguments: [String]) {
        self.directory = directory
        self.dataDir = dataDir
        self.control = control
        self.listen = listen
        self.admin = admin
        self.controlArguments = controlArguments
    }

    public var caFile: URL { dataDir.appendingPathComponent("ca.pem") }
    public var adminToken: String {
        get throws { try String(contentsOf: dataDir.appendingPathComponent("admin.token"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// Creates a join token through the real CLI.
    public func token(for service: String, ttl: String = "10m") async throws -> String {
        let result = try await MeshProcess.runToEnd(["token", "create", "--service", service, "--ttl", ttl,
                                                     "--admin", admin.description, "--data-dir", dataDir.path])
        guard result.status == 0 else { throw TestFailure("mesh token create failed: \(result.err)") }
        return result.out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a `mesh` operator verb against this control plane (admin address and token added).
    public func cli(_ arguments: [String], stdin: String? = nil) async throws -> (status: Int32, out: String, err: String) {
        try await MeshProcess.runToEnd(arguments + ["--admin", admin.description, "--data-dir", dataDir.path])
    }

    /// The registry as the operator API lists it.
    public func services() async throws -> [AdminAPI.ServiceListing] {
        try await adminClient().get(AdminAPI.servicesPath).decode([AdminAPI.ServiceListing].self)
    }

    public func adminClient() throws -> APIClient {
        APIClient(target: admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil, bearerToken: try adminToken)
    }

    /// A client of the proxy API as a proxy that has not joined yet (no client certificate),
    /// verifying that it talks to the real control plane.
    public func unjoinedProxyClient() throws -> APIClient {
        let bundle = try TrustBundle(pem: String(contentsOf: caFile, encoding: .utf8))
        let control = try SPIFFEID(trustDomain: bundle.trustDomain, path: "/ns/mesh-system/sa/control")
        return APIClient(target: listen, group: MultiThreadedEventLoopGroup.singleton,
                         tls: APIClient.TLS(context: try MeshTLS.clientContext(svid: nil, bundle: bundle),
                                            verifier: SPIFFEPeerVerifier(bundle: bundle, expected: [control], usage: .serverAuth)))
    }

    /// A started sidecar with its resolved addresses.
    public struct Proxy: Sendable {
        public let process: MeshProcess
        public let inbound: HostPort
        public let outbound: HostPort
        public let admin: HostPort
        /// `--upstream SERVICE=…` ports as bound, by service.
        public var upstreams: [String: HostPort] = [:]
    }

    /// Starts `mesh proxy` for `service` in front of `app` and waits until it is ready.
    public func proxy(_ service: String, app: HostPort, labels: [String] = [], extra: [String] = []) async throws -> Proxy {
        let token = try await token(for: service)
        var arguments = ["proxy", "--service", service, "--app", app.description,
                         "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                         "--control", listen.description, "--ca-file", caFile.path, "--token", token,
                         "--heartbeat-interval", "500ms"] + extra
        for label in labels { arguments += ["--label", label] }
        let process = try MeshProcess(arguments, logDirectory: directory)
        proxies.append(process)
        let fields = try await process.waitForLine(prefix: "mesh proxy ready:")
        var upstreams: [String: HostPort] = [:]
        for (key, value) in fields where key.hasPrefix("upstream.") {
            upstreams[String(key.dropFirst("upstream.".count))] = try HostPort(parsing: value)
        }
        return Proxy(process: process, inbound: try HostPort(parsing: fields["inbound"] ?? ""),
                     outbound: try HostPort(parsing: fields["outbound"] ?? ""), admin: try HostPort(parsing: fields["admin"] ?? ""),
                     upstreams: upstreams)
    }

    /// Stops the control plane (SIGTERM) and starts it again on the same data directory and ports.
    public func restartControl(downtime: Duration = .zero, whileDown: (() async throws -> Void)? = nil) async throws {
        await control.stop()
        try await whileDown?()
        if downtime > .zero { try await Task.sleep(for: downtime) }
        var arguments = controlArguments
        if let i = arguments.firstIndex(of: "--listen") { arguments[i + 1] = listen.description }
        if let i = arguments.firstIndex(of: "--admin") { arguments[i + 1] = admin.description }
        control = try MeshProcess(arguments, logDirectory: directory)
        _ = try await control.waitForLine(prefix: "mesh control ready:")
    }

    /// Stops every process and removes the directory.
    public func shutdown() async {
        for proxy in proxies { await proxy.stop() }
        await control.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// All logs, for failure messages.
    public var logs: String {
        ([control] + proxies).map { "--- mesh \($0.arguments.prefix(3).joined(separator: " "))\n\($0.log.suffix(12000))" }.joined(separator: "\n")
    }
}

/// Sends plain HTTP through a sidecar's outbound listener, as an app would.
public func callThroughMesh(_ outbound: HostPort, service: String, path: String = "/") async throws -> APIClient.Response {
    var client = APIClient(target: outbound, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
    client.hostHeader = service
    client.requestTimeout = .seconds(10)
    return try await client.get(path)
}
