import Foundation
import Logging
import MeshCore
import MeshTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An upstream app for tests: answers `hello from NAME` and records every request it saw,
/// so a test can assert that a refused connection never reached it.
public final class TestApp: Sendable {
    public struct Seen: Sendable {
        public let path: String
        public let headers: [(String, String)]
        public func header(_ name: String) -> [String] {
            headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
        }
    }

    /// How the app answers, changeable while it runs: a delay before every answer and the
    /// status it answers with (a slow or failing backend).
    public final class Behaviour: Sendable {
        private let state: NIOLockedValueBox<(delay: Duration, status: HTTPResponseStatus, failureRatio: Double)>
        /// - Parameter failureRatio: share of requests answered with `status` (the rest 200).
        public init(delay: Duration = .zero, status: HTTPResponseStatus = .ok, failureRatio: Double = 1) {
            state = NIOLockedValueBox((delay, status, failureRatio))
        }
        /// The status of the next answer.
        func nextStatus() -> HTTPResponseStatus {
            state.withLockedValue { $0.status == .ok || Double.random(in: 0..<1) >= $0.failureRatio ? .ok : $0.status }
        }
        public var delay: Duration {
            get { state.withLockedValue { $0.delay } }
            set { state.withLockedValue { $0.delay = newValue } }
        }
        public var status: HTTPResponseStatus {
            get { state.withLockedValue { $0.status } }
            set { state.withLockedValue { $0.status = newValue } }
        }
    }

    public let name: String
    private let server: APIServer
    private let task: Task<Void, Never>
    private let seen: NIOLockedValueBox<[Seen]>

    public var address: HostPort { server.localAddress }
    public var requests: [Seen] { seen.withLockedValue { $0 } }

    /// - Parameter next: a service to call for every request through this app's sidecar
    ///   (its outbound listener), passing the trace context on as instrumented apps do.
    public static func start(_ name: String, port: Int = 0, next: (outbound: HostPort, service: String)? = nil,
                             behaviour: Behaviour? = nil) async throws -> TestApp {
        let seen = NIOLockedValueBox<[Seen]>([])
        let server = try await APIServer.bind(HostPort(host: "127.0.0.1", port: port), group: MultiThreadedEventLoopGroup.singleton,
                                              logger: Logger(label: "test.app")) { request in
            seen.withLockedValue { $0.append(Seen(path: request.path, headers: request.headers.map { ($0.name, $0.value) })) }
            // `/slow` answers after a second: an in-flight request for shutdown tests.
            if request.path.hasPrefix("/slow") { try? await Task.sleep(for: .seconds(1)) }
            if let behaviour {
                if behaviour.delay > .zero { try? await Task.sleep(for: behaviour.delay) }
                let status = behaviour.nextStatus()
                if status != .ok { return .text("\(name) fails with \(status.code)\n", status: status) }
            }
            if let next {
                var client = APIClient(target: next.outbound, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
                client.hostHeader = next.service
                client.extraHeaders = ["traceparent", "tracestate"].compactMap { name in
                    request.headers.first(name: name).map { (name, $0) }
                }
                let downstream = (try? await client.get(request.path))?.text ?? "\(next.service) unreachable\n"
                return .text("hello from \(name), then \(downstream)")
            }
            return .text("hello from \(name)\n")
        }
        return TestApp(name: name, server: server, seen: seen)
    }

    private init(name: String, server: APIServer, seen: NIOLockedValueBox<[Seen]>) {
        self.name = name
        self.server = server
        self.seen = seen
        self.task = Task { await server.run() }
    }

    public func stop() async {
        await server.close()
        task.cancel()
    }
}
