import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshProxy

/// `mesh proxy`: runs a sidecar next to one service instance.
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy", abstract: "Run a sidecar proxy next to a service instance.")

    @Option(help: "Service name this instance belongs to (its SPIFFE identity).")
    var service: String

    @Option(help: "Address of the local app the inbound listener forwards to.")
    var app: HostPort

    @Option(help: "Inbound mTLS listener, reachable by other proxies.")
    var inbound: HostPort

    @Option(help: "Outbound listener for the local app (keep on loopback).")
    var outbound: HostPort

    @Option(help: "Admin listener (/ready, /live).")
    var admin: HostPort

    @Option(help: "Control plane proxy API address.")
    var control: HostPort

    @Option(help: "Trust bundle of the mesh (the control plane's ca.pem).")
    var caFile: String

    @Option(help: "Single-use join token from 'mesh token create'.")
    var token: String?

    @Option(help: "File holding the join token.")
    var tokenFile: String?

    @Option(name: .customLong("label"), help: "Label of this instance, KEY=VALUE (repeatable).")
    var labels: [String] = []

    @Option(help: "Address other proxies dial to reach the inbound listener (default: the inbound host, or the address the control plane sees).")
    var advertiseAddress: String?

    @Option(help: "Heartbeat interval to the control plane.")
    var heartbeatInterval = DurationArgument(seconds: 5)

    @Option(help: "Time from a request's first byte to the end of its headers before the connection is closed.")
    var requestHeaderTimeout = DurationArgument(seconds: 10)

    @Option(help: "Event loop threads of the data path.")
    var threads = 1

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if (token == nil) == (tokenFile == nil) {
            throw ValidationError("give exactly one of --token or --token-file (create a token with 'mesh token create --service \(service)')")
        }
        do { _ = try ServiceName(service) } catch let error as MeshError { throw ValidationError("--service: \(error.message)") }
        do { _ = try Labels(parsing: labels) } catch let error as MeshError { throw ValidationError("--label: \(error.message)") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be between 1 and 64") }
    }

    func run() async throws {
        LoggingSetup.bootstrap(level: logLevel)
        let joinToken = try token ?? readFile(tokenFile ?? "", flag: "--token-file").trimmingCharacters(in: .whitespacesAndNewlines)
        var config = Sidecar.Configuration(
            service: try ServiceName(service), app: app, inbound: inbound, outbound: outbound, admin: admin,
            control: control, trustBundlePEM: try readFile(caFile, flag: "--ca-file"), joinToken: joinToken)
        config.labels = try Labels(parsing: labels)
        config.advertiseAddress = advertiseAddress ?? ""
        config.heartbeatInterval = heartbeatInterval.duration
        config.threads = threads
        config.limits.requestHeaderTimeout = .milliseconds(Int64(requestHeaderTimeout.seconds * 1000))
        let sidecar = Sidecar(configuration: config, logger: Logger(label: "mesh.proxy.\(service)"))
        try await SignalScope.run {
            try await sidecar.run { addresses in
                say("mesh proxy ready: service=\(service) inbound=\(addresses.inbound) outbound=\(addresses.outbound) admin=\(addresses.admin)")
            }
        }
    }
}
