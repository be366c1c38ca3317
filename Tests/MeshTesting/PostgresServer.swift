import Foundation
import MeshCore

/// A real PostgreSQL server (Debian's `postgresql` package) in a temporary directory, on a
/// loopback port, with `trust` authentication for the `postgres` user; stopped and removed
/// by ``stop()``. When the tests run as root, the server runs as the `postgres` user (it
/// refuses root).
public final class PostgresServer: @unchecked Sendable {
    public let port: Int
    public let directory: URL
    private let binDir: URL
    private let asPostgres: Bool
    /// The postmaster, a direct child (not daemonized by pg_ctl: Foundation's `Process`
    /// would wait for a daemon that inherited its termination pipe).
    private var server = Process()

    public var address: HostPort { HostPort(host: "127.0.0.1", port: port) }

    /// The server binaries' directory (`pg_config --bindir`, else the newest
    /// /usr/lib/postgresql/N/bin), or nil when PostgreSQL is not installed.
    public static var binDirectory: URL? {
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .compactMap(Int.init).sorted(by: >)
        for version in versions {
            let bin = root.appendingPathComponent("\(version)/bin")
            if FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("postgres").path) { return bin }
        }
        return nil
    }

    /// `psql`, from the server's directory or the PATH.
    public static var psql: String? {
        if let bin = binDirectory, FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("psql").path) {
            return bin.appendingPathComponent("psql").path
        }
        return ["/usr/bin/psql", "/usr/local/bin/psql"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    private init(port: Int, directory: URL, binDir: URL, asPostgres: Bool) {
        self.port = port
        self.directory = directory
        self.binDir = binDir
        self.asPostgres = asPostgres
    }

    /// initdb, then start on a free port; returns once the server accepts connections.
    public static func start() async throws -> PostgresServer {
        guard let binDir = binDirectory else { throw TestFailure("PostgreSQL is not installed (apt-get install postgresql)") }
        let asPostgres = getuid() == 0
        let directory = URL(fileURLWithPath: "/tmp/swiftmesh-pg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if asPostgres {
            guard let user = getpwnam("postgres") else { throw TestFailure("running as root but there is no 'postgres' user") }
            chown(directory.path, user.pointee.pw_uid, user.pointee.pw_gid)
        }
        let port = try freePort()
        let server = PostgresServer(port: port, directory: directory, binDir: binDir, asPostgres: asPostgres)
        let data = directory.appendingPathComponent("data").path
        try server.run("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        do {
            try await server.startServer()
        } catch {
            server.stop()
            throw error
        }
        return server
    }

    /// Starts the postmaster on the existing data directory and port; returns once it accepts
    /// connections.
    public func startServer() async throws {
        server = Process()
        try launch(server, "postgres", ["-D", directory.appendingPathComponent("data").path, "-p", String(port), "-k", directory.path,
                                        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                   log: directory.appendingPathComponent("server.log"))
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if (try? RawTCPClient(address)) != nil { return }
            guard server.isRunning else { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = (try? String(contentsOf: directory.appendingPathComponent("server.log"), encoding: .utf8)) ?? ""
        throw TestFailure("PostgreSQL did not start: \(log.suffix(2000))")
    }

    /// Stops the postmaster (fast shutdown: sessions end) and keeps the data, for an outage.
    public func stopServer() {
        if server.isRunning {
            kill(server.processIdentifier, SIGINT)
            server.waitUntilExit()
        }
    }

    /// Runs SQL with psql against `address` (the server itself, or a mesh port in front of
    /// it); returns psql's exit status and output (unaligned, tuples only).
    public static func psql(_ sql: String, at address: HostPort, timeout: TimeInterval = 20) throws -> (status: Int32, out: String, err: String) {
        guard let psql else { throw TestFailure("psql is not installed (apt-get install postgresql-client)") }
        var environment = ProcessInfo.processInfo.environment
        environment["PGCONNECT_TIMEOUT"] = "10"
        environment["PGSSLMODE"] = "disable"
        return try runCapturingOutput(psql, ["-h", address.host, "-p", String(address.port), "-U", "postgres", "-d", "postgres",
                                             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                                      environment: environment, timeout: timeout)
    }

    /// Fast shutdown (SIGINT: sessions end, no checkpoint wait), then the directory goes.
    public func stop() {
        stopServer()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Starts `tool` as the `postgres` user when running as root (setpriv execs, so the
    /// process is the tool itself and signals reach it).
    private func launch(_ process: Process, _ tool: String, _ arguments: [String], log: URL) throws {
        let path = binDir.appendingPathComponent(tool).path
        if asPostgres {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        }
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let output = try FileHandle(forWritingTo: log)
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    /// Runs `tool` to its end (as `launch` does), output in `DIR/TOOL.out`.
    private func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        let log = directory.appendingPathComponent("\(tool).out")
        try launch(process, tool, arguments, log: log)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            throw TestFailure("\(tool) failed (\(process.terminationStatus)): \(text.suffix(2000))")
        }
    }

    /// A port nothing listens on right now (bound, read, released).
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw TestFailure("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
