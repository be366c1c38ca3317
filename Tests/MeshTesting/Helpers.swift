import Foundation
import MeshCore
import MeshTransport
import NIOPosix

/// Retries `work` until it succeeds or `timeout` passes (for things that become true soon,
/// such as a registry push). Returns the first success.
public func eventually<T>(timeout: Duration = .seconds(10), interval: Duration = .milliseconds(100),
                          _ work: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    var lastError: Error?
    while ContinuousClock.now < deadline {
        do { return try await work() } catch { lastError = error }
        try await Task.sleep(for: interval)
    }
    throw lastError ?? TestFailure("timed out")
}

/// Waits until `condition` holds; returns how long it took.
@discardableResult
public func waitUntil(timeout: Duration = .seconds(10), _ condition: () async -> Bool) async throws -> Duration {
    let start = ContinuousClock.now
    while ContinuousClock.now - start < timeout {
        if await condition() { return ContinuousClock.now - start }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("condition not met within \(timeout)")
}

/// GET over plain HTTP (admin ports).
public func plainGet(_ target: HostPort, _ path: String) async throws -> APIClient.Response {
    try await APIClient(target: target, group: MultiThreadedEventLoopGroup.singleton, tls: nil).get(path)
}

public enum APIClientFactory {
    /// A client that talks to a sidecar's outbound listener as an app would.
    public static func outbound(_ outbound: HostPort, service: String) -> APIClient {
        var client = APIClient(target: outbound, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
        client.hostHeader = service
        return client
    }
}
