import Foundation
import Logging
import MeshCore
import MeshTransport
import NIOCore
import NIOHTTP1
import NIOPosix

/// The three small services of `mesh demo`: web → api → store. Each is a plain HTTP app that
/// knows nothing about the mesh: it calls the next one through its own sidecar's outbound
/// listener with `Host: <service>` and the same path, passes the trace context on (as an
/// instrumented app does), and reports who called it from `x-mesh-peer-identity`.
///
/// `store` has a bad path for the observability tools to find: `/checkout` takes 120–180 ms
/// and fails one time in five.
enum DemoApps {
    /// Starts an app; `downstream` is (service to call, this app's outbound sidecar address).
    static func start(name: String, downstream: (service: String, outbound: @Sendable () -> HostPort?)?,
                      logger: Logger) async throws -> APIServer {
        try await APIServer.bind(HostPort(host: "127.0.0.1", port: 0), group: MultiThreadedEventLoopGroup.singleton,
                                 logger: logger) { request in
            var answer: [String: Any] = [
                "service": name,
                "path": request.path,
                "caller": request.headers.first(name: "x-mesh-peer-identity") ?? "none (not through the mesh)",
            ]
            if name == "store" {
                if request.path.hasPrefix("/checkout") {
                    try? await Task.sleep(for: .milliseconds(Int.random(in: 120...180)))
                    if Int.random(in: 0..<5) == 0 {
                        answer["error"] = "payment backend timed out"
                        return json(answer, status: .serviceUnavailable)
                    }
                }
                answer["items"] = ["apples", "pears", "plums"]
            }
            if let downstream, let outbound = downstream.outbound() {
                var client = APIClient(target: outbound, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
                client.hostHeader = downstream.service
                client.extraHeaders = ["traceparent", "tracestate"].compactMap { header in
                    request.headers.first(name: header).map { (header, $0) }
                }
                do {
                    let response = try await client.get(request.path)
                    let nested = try? JSONSerialization.jsonObject(with: Data(response.body.readableBytesView))
                    answer[downstream.service] = nested ?? response.text
                    if response.status.code >= 300 {
                        return json(answer, status: .badGateway)
                    }
                } catch {
                    answer[downstream.service] = "call failed: \(error)"
                    return json(answer, status: .badGateway)
                }
            }
            return json(answer, status: .ok)
        }
    }

    private static func json(_ object: [String: Any], status: HTTPResponseStatus) -> APIResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return APIResponse(status: status, headers: ["content-type": "application/json"],
                           body: .bytes(ByteBuffer(bytes: data + Data("\n".utf8))))
    }
}
