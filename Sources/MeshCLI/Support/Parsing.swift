import ArgumentParser
import Foundation
import MeshCore
import MeshTransport
import NIOPosix

extension HostPort: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}

/// A duration flag such as `10m` or `30s`.
struct DurationArgument: ExpressibleByArgument, Sendable, CustomStringConvertible {
    let seconds: Double
    init?(argument: String) {
        guard let value = try? DurationParser.seconds(argument) else { return nil }
        seconds = value
    }
    init(seconds: Double) { self.seconds = seconds }
    var duration: Duration { .milliseconds(Int64(seconds * 1000)) }
    /// Shown as the default in `--help`.
    var description: String {
        if seconds >= 3600, seconds.truncatingRemainder(dividingBy: 3600) == 0 { return "\(Int(seconds / 3600))h" }
        if seconds >= 60, seconds.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(seconds / 60))m" }
        if seconds >= 1, seconds.truncatingRemainder(dividingBy: 1) == 0 { return "\(Int(seconds))s" }
        return "\(Int(seconds * 1000))ms"
    }
    var defaultValueDescription: String { description }
}

/// Reads a file a flag points at, with an error that names the flag.
func readFile(_ path: String, flag: String) throws -> String {
    do {
        return try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ValidationError("\(flag) \(path): cannot read the file (\((error as NSError).localizedDescription)); check the path")
    }
}

/// Where the operator commands find the control plane's admin API and token.
struct AdminOptions: ParsableArguments {
    @Option(help: "Control plane admin API address.")
    var admin: HostPort = HostPort(host: "127.0.0.1", port: 7901)

    @Option(help: "Data directory of the control plane (its admin.token is read from there).")
    var dataDir: String = "mesh-data"

    @Option(help: "File holding the admin token (default: DATA_DIR/admin.token; or set MESH_ADMIN_TOKEN).")
    var adminTokenFile: String?

    /// A client of the operator API with the admin token.
    func client() throws -> APIClient {
        APIClient(target: admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil, bearerToken: try token())
    }

    func token() throws -> String {
        if let env = ProcessInfo.processInfo.environment["MESH_ADMIN_TOKEN"], !env.isEmpty { return env }
        if let adminTokenFile {
            return try readFile(adminTokenFile, flag: "--admin-token-file").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let path = (dataDir as NSString).appendingPathComponent("admin.token")
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ValidationError("no admin token at \(path): pass the control plane's --data-dir, --admin-token-file FILE, or set MESH_ADMIN_TOKEN")
        }
        return try readFile(path, flag: "--data-dir").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
