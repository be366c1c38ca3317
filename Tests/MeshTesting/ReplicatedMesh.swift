import Foundation
import MeshCore
import MeshTransport
import NIOPosix

/// Several `mesh control` replicas on one real PostgreSQL (each with its own data directory and
/// ports, sharing a store secret), and proxies that know all of them: the highly available
/// deployment, on loopback.
public final class ReplicatedMesh: @unchecked Sendable {
    public let directory: URL
    public let database: PostgresServer
    public let secretFile: URL
    /// The replicas, by index; nil while stopped.
    public private(set) var replicas: [MeshProcess?]
    public private(set) var listens: [HostPort]
    public private(set) var admins: [HostPort]
    private let heartbeatTTL: String
    private let extra: [String]
    public var proxies: [MeshProcess] = []

    public var storeURL: String { "postgres://postgres@127.0.0.1:\(database.port)/postgres?sslmode=disable" }

    public static func start(replicas count: Int = 3, heartbeatTTL: String = "3s", extra: [String] = []) async throws -> ReplicatedMesh {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-ha-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let database = try await PostgresServer.start()
        let secretFile = directory.appendingPathComponent("store.secret")
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        FileManager.default.createFile(atPath: secretFile.path, contents: Data(secret.utf8), attributes: [.posixPermissions: 0o600])
        let mesh = ReplicatedMesh(directory: directory, database: database, secretFile: secretFile, count: count, heartbeatTTL: heartbeatTTL, extra: extra)
        do {
            // One after the other: the first stores the CA, the others load it.
            for index in 0..<count { try await mesh.startReplica(index) }
        } catch {
            await mesh.shutdown()
            throw error
        }
        return mesh
    }

    private init(directory: URL, database: PostgresServer, secretFile: URL, count: Int, heartbeatTTL: String, extra: [String]) {
        self.extra = extra
        self.directory = directory
        self.database = database
        self.secretFile = secretFile
        self.replicas = Array(repeating: nil, count: count)
        self.listens = Array(repeating: HostPort(host: "127.0.0.1", port: 0), count: count)
        self.admins = Array(repeating: HostPort(host: "127.0.0.1", port: 0), count: count)
        self.heartbeatTTL = heartbeatTTL
    }

    public func dataDir(_ index: Int) -> URL { directory.appendingPathComponent("replica-\(index)") }
    public var caFile: URL { dataDir(0).appendingPathComponent("ca.pem") }

    /// Starts replica `index` (again, on its previous ports once it has had some).
    public func startReplica(_ index: Int) async throws {
        let arguments = ["control", "--data-dir", dataDir(index).path, "--listen", listens[index].description,
                         "--admin", admins[index].description, "--heartbeat-ttl", heartbeatTTL, "--default-policy", "deny",
                         "--store", storeURL, "--store-secret-file", secretFile.path] + extra
        let process = try MeshProcess(arguments, logDirectory: directory)
        let fields = try await process.waitForLine(prefix: "mesh control ready:")
        listens[index] = try HostPort(parsing: fields["listen"] ?? "")
        admins[index] = try HostPort(parsing: fields["admin"] ?? "")
        replicas[index] = process
    }

    /// Stops replica `index`: SIGKILL by default (a crash: no goodbye to anyone).
    public func stopReplica(_ index: Int, signal: Int32 = SIGKILL) async {
        await replicas[index]?.stop(signal: signal)
        replicas[index] = nil
    }

    /// Runs a `mesh` operator verb against replica `index`.
    public func cli(_ arguments: [String], replica index: Int = 0) async throws -> (status: Int32, out: String, err: String) {
        try await MeshProcess.runToEnd(arguments + ["--admin", admins[index].description, "--data-dir", dataDir(index).path])
    }

    /// The policy most tests need: `web` may call `api`.
    public static let webToAPI = """
        kind: AuthorizationPolicy
        metadata: {name: web-to-api}
        spec: {selector: {service: api}, rules: [{from: [{services: [web]}]}]}
        """

    /// Writes `yaml` to a file and runs `mesh apply -f` through replica `index`.
    public func apply(_ yaml: String, replica index: Int = 0) async throws -> (status: Int32, out: String, err: String) {
        let file = directory.appendingPathComponent("apply-\(UUID().uuidString.prefix(8)).yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        return try await cli(["apply", "-f", file.path], replica: index)
    }

    public func adminClient(_ index: Int) throws -> APIClient {
        let token = try String(contentsOf: dataDir(index).appendingPathComponent("admin.token"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return APIClient(target: admins[index], group: MultiThreadedEventLoopGroup.singleton, tls: nil, bearerToken: token)
    }

    public func services(replica index: Int) async throws -> [AdminAPI.ServiceListing] {
        try await adminClient(index).get(AdminAPI.servicesPath).decode([AdminAPI.ServiceListing].self)
    }

    /// Starts `mesh proxy` for `service`, its token made through replica `tokenFrom`, knowing
    /// the replicas `controls` (all by default, in that order).
    public func proxy(_ service: String, app: HostPort, controls: [Int]? = nil, tokenFrom: Int = 0,
                      extra: [String] = []) async throws -> TestMesh.Proxy {
        let created = try await cli(["token", "create", "--service", service, "--ttl", "10m"], replica: tokenFrom)
        guard created.status == 0 else { throw TestFailure("mesh token create failed: \(created.err)") }
        let token = created.out.trimmingCharacters(in: .whitespacesAndNewlines)
        let control = (controls ?? Array(listens.indices)).map { listens[$0].description }.joined(separator: ",")
        let arguments = ["proxy", "--service", service, "--app", app.description,
                         "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                         "--control", control, "--ca-file", caFile.path, "--token", token,
                         "--heartbeat-interval", "500ms"] + extra
        let process = try MeshProcess(arguments, logDirectory: directory)
        proxies.append(process)
        let fields = try await process.waitForLine(prefix: "mesh proxy ready:")
        return TestMesh.Proxy(process: process, inbound: try HostPort(parsing: fields["inbound"] ?? ""),
                              outbound: try HostPort(parsing: fields["outbound"] ?? ""),
                              admin: try HostPort(parsing: fields["admin"] ?? ""))
    }

    public func shutdown() async {
        for proxy in proxies { await proxy.stop() }
        for index in replicas.indices { await replicas[index]?.stop() }
        database.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    public var logs: String {
        (replicas.compactMap { $0 } + proxies).map { "--- mesh \($0.arguments.prefix(3).joined(separator: " "))\n\($0.log.suffix(8000))" }
            .joined(separator: "\n")
    }
}
