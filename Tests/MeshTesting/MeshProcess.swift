import Foundation
import NIOConcurrencyHelpers

/// A real `mesh` process started by a test: stdout is read line by line (ready lines),
/// stderr goes to a log file that is printed when a test fails to find what it waits for.
public final class MeshProcess: @unchecked Sendable {
    public let process = Process()
    private let lines = NIOLockedValueBox<[String]>([])
    public let logFile: URL
    public let arguments: [String]

    /// The `mesh` binary next to the test bundle (override with MESH_BINARY).
    public static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["MESH_BINARY"] { return URL(fileURLWithPath: path) }
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let url = candidate.appendingPathComponent("mesh")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return URL(fileURLWithPath: ".build/debug/mesh")
    }

    public init(_ arguments: [String], logDirectory: URL) throws {
        self.arguments = arguments
        process.executableURL = Self.binary
        process.arguments = arguments
        logFile = logDirectory.appendingPathComponent("mesh-\(arguments.first ?? "x")-\(UUID().uuidString.prefix(6)).log")
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: logFile)
        let pipe = Pipe()
        process.standardOutput = pipe
        let box = lines
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            guard !data.isEmpty, let text = String(data: data, encoding: .utf8) else { return }
            box.withLockedValue { $0.append(contentsOf: text.split(separator: "\n").map(String.init)) }
        }
        try process.run()
    }

    /// Everything printed on stdout so far.
    public var output: [String] { lines.withLockedValue { $0 } }

    /// The stderr log, for failure messages.
    public var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// Waits for a stdout line starting with `prefix` and returns its `key=value` fields.
    public func waitForLine(prefix: String, timeout: Duration = .seconds(30)) async throws -> [String: String] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = output.first(where: { $0.hasPrefix(prefix) }) {
                var fields: [String: String] = [:]
                for token in line.dropFirst(prefix.count).split(separator: " ") {
                    let kv = token.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
                }
                return fields
            }
            if !process.isRunning {
                throw TestFailure("mesh \(arguments.joined(separator: " ")) exited with \(process.terminationStatus) before printing '\(prefix)':\n\(log.suffix(3000))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("mesh \(arguments.first ?? "") did not print '\(prefix)' within \(timeout):\n\(log.suffix(3000))")
    }

    /// Sends a signal and waits for the exit; returns the exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return -9
        }
        return process.terminationStatus
    }

    /// Runs `mesh ARGS` to completion (for one-shot verbs) and returns (status, stdout, stderr).
    public static func runToEnd(_ arguments: [String], environment: [String: String]? = nil) async throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}

/// An error thrown by fixtures with a message meant for the test log.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
