import Foundation
import MeshCore

/// Debian's nginx as an HTTP/2 (h2c, prior knowledge) app: it answers every request with
/// `hello from nginx` at once, without reading a request body, and then stops the upload with
/// RST_STREAM(NO_ERROR), as RFC 9113 §8.1 allows and as nginx does for every such answer.
public final class NginxApp: @unchecked Sendable {
    public let address: HostPort
    private let process: Process
    private let directory: URL

    /// The nginx binary; nil when nginx (Debian package `nginx`) is not installed.
    public static var binary: String? {
        ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    private init(address: HostPort, process: Process, directory: URL) {
        self.address = address
        self.process = process
        self.directory = directory
    }

    public static func start() async throws -> NginxApp {
        guard let binary else { throw TestFailure("nginx is not installed (Debian package nginx)") }
        let port = try PostgresServer.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-nginx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let dir = directory.path
        // One process in the foreground, every path in the test's directory (no root needed).
        let config = """
        daemon off; master_process off; worker_processes 1;
        pid \(dir)/nginx.pid; error_log \(dir)/error.log;
        events { worker_connections 256; }
        http {
          access_log off;
          client_body_temp_path \(dir)/body; proxy_temp_path \(dir)/proxy; fastcgi_temp_path \(dir)/fastcgi;
          uwsgi_temp_path \(dir)/uwsgi; scgi_temp_path \(dir)/scgi;
          keepalive_requests 1000000;
          server { listen 127.0.0.1:\(port) http2; location / { return 200 "hello from nginx\\n"; } }
        }
        """
        let file = directory.appendingPathComponent("nginx.conf")
        try config.write(to: file, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-c", file.path, "-p", dir, "-e", "\(dir)/error.log"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let app = NginxApp(address: HostPort(host: "127.0.0.1", port: port), process: process, directory: directory)
        do {
            _ = try await eventually(timeout: .seconds(10)) {
                let probe = try runCapturingOutput("/usr/bin/curl", ["-sS", "--http2-prior-knowledge", "--max-time", "2",
                                                                     "http://127.0.0.1:\(port)/"], timeout: 5)
                guard probe.out.contains("hello from nginx") else { throw TestFailure("nginx not up yet: \(probe.err)") }
            }
        } catch {
            let log = (try? String(contentsOf: directory.appendingPathComponent("error.log"), encoding: .utf8)) ?? ""
            app.stop()
            throw TestFailure("nginx did not start: \(error)\n\(log)")
        }
        return app
    }

    /// SIGKILL: nginx inherits the test process's blocked signals (SIGTERM among them) and,
    /// without a master process, never unblocks them.
    public func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
    }
}
