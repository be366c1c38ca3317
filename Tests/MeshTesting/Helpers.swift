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

/// Runs `executable` to its end (killed after `timeout`) and returns its status and output.
/// The output goes through files, not pipes: a large answer would fill a pipe that nobody
/// reads until the process ends.
public func runCapturingOutput(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                               timeout: TimeInterval) throws -> (status: Int32, out: String, err: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("run-\(UUID().uuidString.prefix(8))")
    let outURL = base.appendingPathExtension("out"), errURL = base.appendingPathExtension("err")
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer {
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
    }
    let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
    defer {
        try? out.close()
        try? err.close()
    }
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(20_000) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    return (process.terminationStatus, (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
            (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
}
