import ArgumentParser
import Foundation
import Logging
import MeshControl
import MeshCore

/// `mesh control`: runs the control plane.
struct ControlCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control", abstract: "Run the control plane: CA, registry, config distribution.")

    @Option(help: "Directory for the CA, admin token and embedded store (created if missing).")
    var dataDir: String

    @Option(help: "Trust domain of the mesh's SPIFFE IDs.")
    var trustDomain = "mesh.local"

    @Option(help: "Proxy API address (mTLS). Use 0.0.0.0:7900 to accept proxies from other hosts.")
    var listen = HostPort(host: "127.0.0.1", port: 7900)

    @Option(help: "Operator API address (token-authenticated; keep it on loopback).")
    var admin = HostPort(host: "127.0.0.1", port: 7901)

    @Option(help: "Lifetime of issued SVIDs, e.g. 24h, 1h, 30s.")
    var svidTtl = DurationArgument(seconds: 24 * 3600)

    @Option(help: "An instance without a heartbeat for this long leaves the registry.")
    var heartbeatTtl = DurationArgument(seconds: 15)

    @Option(help: "Requests no AuthorizationPolicy allows: deny (default) or audit (let through and log, for migrations).")
    var defaultPolicy = "deny"

    @Option(help: "Where the registry, join tokens and resources live: the embedded SQLite file of --data-dir (default), or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require] (the password may also come from PGPASSWORD).")
    var store: String?

    @Option(help: "With a PostgreSQL store: a file (mode 0600) holding 32+ random bytes, base64 or raw, that seals the CA key and admin token in the database; the same on every replica. MESH_STORE_SECRET may hold the secret instead.")
    var storeSecretFile: String?

    @Option(help: "During 'mesh ca rotate', proxies renew onto the new root at random within this window.")
    var rotationRenewWindow = DurationArgument(seconds: 10)

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        LoggingSetup.bootstrap(level: logLevel)
        var config = ControlPlane.Configuration(dataDirectory: dataDir)
        config.trustDomain = trustDomain
        config.listen = listen
        config.admin = admin
        config.svidLifetime = svidTtl.seconds
        config.heartbeatTTL = heartbeatTtl.seconds
        config.defaultPolicy = defaultPolicy
        config.storeURL = store
        config.rotationRenewWindow = rotationRenewWindow.seconds
        if let storeSecretFile {
            config.storeSecret = try StoreSecret.load(path: storeSecretFile)
        } else if let text = ProcessInfo.processInfo.environment["MESH_STORE_SECRET"], !text.isEmpty {
            config.storeSecret = try StoreSecret.parse(Data(text.utf8))
        }
        let plane = ControlPlane(configuration: config, logger: Logger(label: "mesh.control"))
        try await SignalScope.run {
            try await plane.run { addresses in
                say("mesh control ready: listen=\(addresses.listen) admin=\(addresses.admin) ca=\((dataDir as NSString).appendingPathComponent("ca.pem"))")
            }
        }
    }
}
