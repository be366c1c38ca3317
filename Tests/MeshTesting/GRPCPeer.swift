import Foundation
import MeshCore

/// A real gRPC server and client from PyPI's `grpcio` (C core), driven by a small Python
/// script: service `test.Echo` with a unary method and a bidirectional streaming one, on raw
/// bytes (generic handlers, no generated code). The server answers `Unary` with
/// `echo:<request>@<name>` and fails `notfound` with NOT_FOUND; `Chat` echoes every message.
public enum GRPCPeer {
    public static var available: Bool {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import grpc"]
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return false }
        probe.waitUntilExit()
        return probe.terminationStatus == 0
    }

    static let script = #"""
import sys, json, time
from concurrent import futures
import grpc

def serve(port, name, max_streams):
    def unary(request, context):
        if request == b"notfound":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"echo:" + request + b"@" + name.encode()
    def chat(requests, context):
        for message in requests:
            yield b"chat:" + message
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    })
    options = [("grpc.max_concurrent_streams", max_streams)] if max_streams > 0 else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("grpc ready port=%d" % bound, flush=True)
    server.wait_for_termination()

def call(target, authority, count):
    options = [("grpc.default_authority", authority)]
    result = {"unary": [], "chat": [], "errors": []}
    with grpc.insecure_channel(target, options=options) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        for i in range(count):
            result["unary"].append(unary(("hello-%d" % i).encode(), timeout=10).decode())
        try:
            unary(b"notfound", timeout=10)
            result["errors"].append("no error")
        except grpc.RpcError as error:
            result["errors"].append("%s %s" % (error.code().name, error.details()))
        chat = channel.stream_stream("/test.Echo/Chat")
        def messages():
            for i in range(count):
                yield ("m%d" % i).encode()
        result["chat"] = [m.decode() for m in chat(messages(), timeout=10)]
    print(json.dumps(result), flush=True)

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
else:
    call(sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""#

    static var scriptFile: URL {
        get throws {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-grpc-peer.py")
            try script.write(to: url, atomically: true, encoding: .utf8)
            return url
        }
    }

    /// A running gRPC server.
    public final class Server: @unchecked Sendable {
        let process: Process
        public let address: HostPort
        init(process: Process, address: HostPort) {
            self.process = process
            self.address = address
        }
        /// SIGKILL: grpcio's server blocks in C code and may not act on SIGTERM.
        public func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    /// - Parameter maxStreams: the SETTINGS_MAX_CONCURRENT_STREAMS the server advertises (0:
    ///   grpcio's default).
    public static func startServer(name: String, maxStreams: Int = 0) async throws -> Server {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", try scriptFile.path, "serve", "0", name, String(maxStreams)]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let line = try await Task.detached { () -> String in
            var data = Data()
            while !data.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                data += chunk
            }
            return String(decoding: data, as: UTF8.self)
        }.value
        guard let port = line.split(separator: "=").last.flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
            process.terminate()
            throw TestFailure("the gRPC server did not start: '\(line)'")
        }
        return Server(process: process, address: HostPort(host: "127.0.0.1", port: port))
    }

    /// What the client saw: unary answers, the NOT_FOUND error, and the bidirectional chat.
    public struct CallResult: Decodable, Sendable {
        public let unary: [String]
        public let chat: [String]
        public let errors: [String]
    }

    /// Calls `count` unary RPCs, one failing one and a `count`-message bidirectional stream
    /// through `target`, with `:authority` set to `authority` (the mesh service name).
    public static func call(_ target: HostPort, authority: String, count: Int) async throws -> CallResult {
        let script = try scriptFile.path
        let result = try await Task.detached {
            try runCapturingOutput("/usr/bin/env", ["python3", script, "call", target.description, authority, String(count)], timeout: 60)
        }.value
        guard result.status == 0, let line = result.out.split(separator: "\n").last else {
            throw TestFailure("the gRPC client failed (\(result.status)): \(result.err.suffix(2000))")
        }
        return try JSONDecoder().decode(CallResult.self, from: Data(line.utf8))
    }
}
