import Foundation
import MeshCore
import NIOConcurrencyHelpers

/// Continuous traffic from four callers until `stop` is set; counts answers.
public final class MeshLoad: @unchecked Sendable {
    public let failures = NIOLockedValueBox<[String]>([])
    public let successes = NIOLockedValueBox(0)
    private let stopped = NIOLockedValueBox(false)
    private var task: Task<Void, Never>?

    public init() {}

    public func start(through outbound: HostPort, service: String) {
        let (failures, successes, stopped) = (failures, successes, stopped)
        task = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        while !stopped.withLockedValue({ $0 }) {
                            do {
                                let response = try await callThroughMesh(outbound, service: service, path: "/work")
                                if response.status.code == 200 {
                                    successes.withLockedValue { $0 += 1 }
                                } else {
                                    failures.withLockedValue { $0.append("\(response.status.code) \(response.text)") }
                                }
                            } catch {
                                failures.withLockedValue { $0.append("\(error)") }
                            }
                            try? await Task.sleep(for: .milliseconds(5))
                        }
                    }
                }
            }
        }
    }

    public func stop() async {
        stopped.withLockedValue { $0 = true }
        await task?.value
    }
}
