import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshProxy

/// `mesh proxy`: runs a sidecar next to one service instance, joined to a control plane
/// (flags) or standalone from a configuration file (`--config`).
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy", abstract: "Run a sidecar proxy next to a service instance.",
        discussion: """
            With a control plane: --service, --app, --inbound, --outbound, --admin, --control, --ca-file and a join token.
            Standalone (your own PKI, no control plane): --config FILE.yaml; see README "Static mode".
            """)

    @Option(help: "Static configuration file (YAML): identity from PEM files, endpoints listed in the file.")
    var config: String?

    @Option(help: "Service name this instance belongs to (its SPIFFE identity).")
    var service: String?

    @Option(help: "Address of the local app the inbound listener forwards to.")
    var app: HostPort?

    @Option(help: "Inbound mTLS listener, reachable by other proxies.")
    var inbound: HostPort?

    @Option(help: "Outbound listener for the local app (keep on loopback).")
    var outbound: HostPort?

    @Option(help: "Admin listener (/ready, /live).")
    var admin: HostPort?

    @Option(help: "Control plane proxy API address.")
    var control: HostPort?

    @Option(help: "Trust bundle of the mesh (the control plane's ca.pem).")
    var caFile: String?

    @Option(help: "Single-use join token from 'mesh token create'.")
    var token: String?

    @Option(help: "File holding the join token.")
    var tokenFile: String?

    @Option(name: .customLong("label"), help: "Label of this instance, KEY=VALUE (repeatable).")
    var labels: [String] = []

    @Option(help: "Address other proxies dial to reach the inbound listener (default: the inbound host, or the address the control plane sees).")
    var advertiseAddress: String?

    @Option(help: "Inbound mTLS mode: strict (mTLS only) or permissive (also plaintext callers outside the mesh, as unauthenticated).")
    var mtls: String?

    @Option(help: "Heartbeat interval to the control plane.")
    var heartbeatInterval = DurationArgument(seconds: 5)

    @Option(help: "Time from a request's first byte to the end of its headers before the connection is closed.")
    var requestHeaderTimeout = DurationArgument(seconds: 10)

    @Option(help: "Event loop threads of the data path.")
    var threads: Int?

    @Option(help: "Access log: 'stdout' or a file, one JSON line per request (off by default).")
    var accessLog: String?

    @Option(help: "Export a span per request over OTLP/HTTP to this URL, e.g. http://127.0.0.1:4318/v1/traces (off by default).")
    var traceEndpoint: String?

    @Option(help: "With --trace-endpoint: share of new traces recorded, 0 to 1 (a caller's sampled trace is always continued).")
    var traceSampling: Double?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if config != nil {
            let clashing = [("--control", control != nil), ("--ca-file", caFile != nil), ("--token", token != nil),
                            ("--token-file", tokenFile != nil)].filter(\.1).map(\.0)
            guard clashing.isEmpty else {
                throw ValidationError("--config runs without a control plane; drop \(clashing.joined(separator: ", "))")
            }
            return
        }
        let missing = [("--service", service == nil), ("--app", app == nil), ("--inbound", inbound == nil),
                       ("--outbound", outbound == nil), ("--admin", admin == nil), ("--control", control == nil),
                       ("--ca-file", caFile == nil)].filter(\.1).map(\.0)
        guard missing.isEmpty else {
            throw ValidationError("missing \(missing.joined(separator: ", ")) (or give --config FILE for standalone mode)")
        }
        if (token == nil) == (tokenFile == nil) {
            throw ValidationError("give exactly one of --token or --token-file (create a token with 'mesh token create --service \(service ?? "NAME")')")
        }
        do { _ = try ServiceName(service ?? "") } catch let error as MeshError { throw ValidationError("--service: \(error.message)") }
        do { _ = try Labels(parsing: labels) } catch let error as MeshError { throw ValidationError("--label: \(error.message)") }
        if let threads, !(1...64).contains(threads) { throw ValidationError("--threads must be between 1 and 64") }
    }

    func run() async throws {
        LoggingSetup.bootstrap(level: logLevel)
        var sidecarConfig = try config.map { try StaticConfigFile.load(path: $0) } ?? controlPlaneConfiguration()
        if let threads { sidecarConfig.threads = threads }
        if let accessLog { sidecarConfig.accessLog = accessLog }
        if let traceEndpoint { sidecarConfig.traceEndpoint = traceEndpoint }
        if let traceSampling {
            guard (0...1).contains(traceSampling) else { throw ValidationError("--trace-sampling must be between 0 and 1") }
            sidecarConfig.traceSampling = traceSampling
        }
        if !labels.isEmpty { sidecarConfig.labels = try Labels(parsing: labels) }
        if let mtls {
            guard ["strict", "permissive"].contains(mtls) else { throw ValidationError("--mtls must be strict or permissive") }
            sidecarConfig.mtlsMode = mtls
        }
        sidecarConfig.limits.requestHeaderTimeout = .milliseconds(Int64(requestHeaderTimeout.seconds * 1000))
        let name = sidecarConfig.service
        let sidecar = Sidecar(configuration: sidecarConfig, logger: Logger(label: "mesh.proxy.\(name)"))
        try await SignalScope.run {
            try await sidecar.run { addresses in
                say("mesh proxy ready: service=\(name) inbound=\(addresses.inbound) outbound=\(addresses.outbound) admin=\(addresses.admin)")
            }
        }
    }

    private func controlPlaneConfiguration() throws -> Sidecar.Configuration {
        guard let service, let app, let inbound, let outbound, let admin, let control, let caFile else {
            throw ValidationError("missing flags; see 'mesh proxy --help'")
        }
        let joinToken = try token ?? readFile(tokenFile ?? "", flag: "--token-file").trimmingCharacters(in: .whitespacesAndNewlines)
        var settings = Sidecar.ControlPlaneSettings(control: control, trustBundlePEM: try readFile(caFile, flag: "--ca-file"),
                                                    joinToken: joinToken)
        settings.advertiseAddress = advertiseAddress ?? ""
        settings.heartbeatInterval = heartbeatInterval.duration
        var config = Sidecar.Configuration(service: try ServiceName(service), app: app, inbound: inbound, outbound: outbound,
                                           admin: admin, source: .controlPlane(settings))
        config.labels = try Labels(parsing: labels)
        return config
    }
}
