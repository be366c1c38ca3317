import Foundation
import MeshCore

/// A real HTTP/1.1 server that is not ours: Python's `http.server` (HTTP/1.1, keep-alive),
/// which answers every request with what it saw, as JSON: the request line's version, the
/// headers and the body's length and SHA-256 (a chunked request body is decoded). `/chunked`
/// answers with a chunked body of three parts; `/slow` answers after 300 ms.
public final class HTTP1Peer: @unchecked Sendable {
    static let script = #"""
import hashlib, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))
    def answer(self):
        body = self.read_body()
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        seen = {"version": self.request_version, "method": self.command, "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            third = len(data) // 3
            for part in (data[:third], data[third:2 * third], data[2 * third:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    do_GET = answer
    do_POST = answer

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print("http1 ready port=%d" % server.server_address[1], flush=True)
server.serve_forever()
"""#

    let process: Process
    public let address: HostPort

    /// What the server saw of one request.
    public struct Seen: Decodable, Sendable {
        public let version: String
        public let method: String
        public let path: String
        public let headers: [[String]]
        public let length: Int
        public let sha256: String
        public func header(_ name: String) -> [String] { headers.filter { $0.first == name }.compactMap { $0.last } }
    }

    public static func start() async throws -> HTTP1Peer {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-http1-peer.py")
        try script.write(to: url, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", url.path]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let line = try await Task.detached { () throws -> String in
            var bytes: [UInt8] = []
            while let byte = try output.fileHandleForReading.read(upToCount: 1)?.first, byte != UInt8(ascii: "\n") {
                bytes.append(byte)
            }
            return String(decoding: bytes, as: UTF8.self)
        }.value
        guard let port = line.split(separator: "=").last.flatMap({ Int($0) }) else {
            kill(process.processIdentifier, SIGKILL)
            throw TestFailure("the HTTP/1.1 peer did not start: '\(line)'")
        }
        return HTTP1Peer(process: process, address: HostPort(host: "127.0.0.1", port: port))
    }

    private init(process: Process, address: HostPort) {
        self.process = process
        self.address = address
    }

    /// SIGKILL: a child of the test runner may inherit a mask that blocks SIGTERM.
    public func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
