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
            After --, a command to run as the app once the proxy is ready (no startup race); the proxy then \
            exits with the app's exit code (jobs end), and stops the app (SIGTERM) when it is stopped itself. \
            The app gets MESH_SERVICE, MESH_OUTBOUND (its proxy's outbound address) and MESH_ADMIN.
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

    @Option(help: "Control plane proxy API address; for replicas, several: HOST:PORT,HOST:PORT (or repeat the flag). The proxy uses one and moves to the next when it cannot be reached.")
    var control: [ControlAddresses] = []

    @Option(help: "Trust bundle of the mesh (the control plane's ca.pem).")
    var caFile: String?

    @Option(help: "Single-use join token from 'mesh token create'.")
    var token: String?

    @Option(help: "File holding the join token.")
    var tokenFile: String?

    @Option(help: "Directory (0700) where the proxy keeps its SVID, key, trust bundle and last registry (files 0600): a restart renews with the saved SVID instead of a new join token, and serves with them while the control plane is down, as long as the SVID is valid.")
    var stateDir: String?

    @Option(name: .customLong("label"), help: "Label of this instance, KEY=VALUE (repeatable).")
    var labels: [String] = []

    @Option(help: "Address other proxies dial to reach the inbound listener (default: the inbound host, or the address the control plane sees).")
    var advertiseAddress: String?

    @Option(help: "Inbound mTLS mode: strict (mTLS only) or permissive (also plaintext callers outside the mesh, as unauthenticated).")
    var mtls: String?

    @Option(help: "What the app speaks: http (default) or tcp (opaque: relayed byte for byte, authorized at L4, e.g. a database).")
    var appProtocol: String?

    @Option(name: .customLong("upstream"),
            help: "A local port for one service, SERVICE=[HOST:]PORT (repeatable): for apps that cannot send 'Host: SERVICE', e.g. psql. HTTP is detected; anything else is relayed opaquely.")
    var upstreams: [String] = []

    @Option(help: "How long an --upstream port waits for the app's first bytes before taking the connection as opaque TCP (a server-first protocol).")
    var detectTimeout = DurationArgument(seconds: 1)

    @Option(help: "How HTTP/1.1 requests travel to peer proxies: http1 (default: a pool of keep-alive HTTP/1.1 connections) or h2 (multiplexed on one HTTP/2 connection per peer and thread: fewer connections and handshakes, more CPU per request). HTTP/2 requests always travel as HTTP/2.")
    var peerProtocol: String?

    @Option(help: "Active health check of the app: 'http:/PATH' (2xx or 3xx within --health-timeout) or 'tcp' (connects). An unhealthy app (2 failures in a row) gets no traffic until a probe passes again.")
    var healthCheck: String?

    @Option(help: "Time between health checks.")
    var healthInterval = DurationArgument(seconds: 5)

    @Option(help: "Time a health check may take.")
    var healthTimeout = DurationArgument(seconds: 1)

    @Option(help: "Heartbeat interval to the control plane.")
    var heartbeatInterval = DurationArgument(seconds: 5)

    @Option(help: "Time from a request's first byte to the end of its headers before the connection is closed.")
    var requestHeaderTimeout = DurationArgument(seconds: 10)

    @Option(help: "Time without a read or a write after which a connection to the proxy is closed (a service's TrafficPolicy timeouts.idle overrides it for its traffic).")
    var idleTimeout = DurationArgument(seconds: 3600)

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
            let clashing = [("--control", !control.isEmpty), ("--ca-file", caFile != nil), ("--token", token != nil),
                            ("--token-file", tokenFile != nil), ("--state-dir", stateDir != nil)].filter(\.1).map(\.0)
            guard clashing.isEmpty else {
                throw ValidationError("--config runs without a control plane; drop \(clashing.joined(separator: ", "))")
            }
            return
        }
        let missing = [("--service", service == nil), ("--app", app == nil), ("--inbound", inbound == nil),
                       ("--outbound", outbound == nil), ("--admin", admin == nil), ("--control", control.isEmpty),
                       ("--ca-file", caFile == nil)].filter(\.1).map(\.0)
        guard missing.isEmpty else {
            throw ValidationError("missing \(missing.joined(separator: ", ")) (or give --config FILE for standalone mode)")
        }
        if token != nil && tokenFile != nil {
            throw ValidationError("give one of --token or --token-file, not both")
        }
        if token == nil && tokenFile == nil && stateDir == nil {
            throw ValidationError("give --token or --token-file (create a token with 'mesh token create --service \(service ?? "NAME")'), or --state-dir of an earlier run")
        }
        do { _ = try ServiceName(service ?? "") } catch let error as MeshError { throw ValidationError("--service: \(error.message)") }
        do { _ = try Labels(parsing: labels) } catch let error as MeshError { throw ValidationError("--label: \(error.message)") }
        if let threads, !(1...64).contains(threads) { throw ValidationError("--threads must be between 1 and 64") }
    }

    @Argument(parsing: .postTerminator, help: "The app to start once the proxy is ready (after --).")
    var command: [String] = []

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
        sidecarConfig.limits.detectTimeout = .milliseconds(Int64(detectTimeout.seconds * 1000))
        guard idleTimeout.seconds >= 0.1 else { throw ValidationError("--idle-timeout must be at least 100ms (it is \(idleTimeout.seconds) s)") }
        sidecarConfig.limits.idleTimeout = .milliseconds(Int64(idleTimeout.seconds * 1000))
        if let peerProtocol {
            guard ["h2", "http1"].contains(peerProtocol) else { throw ValidationError("--peer-protocol must be h2 or http1") }
            sidecarConfig.limits.http1OverHTTP2 = peerProtocol == "h2"
        }
        if let appProtocol {
            guard ["http", "tcp"].contains(appProtocol) else { throw ValidationError("--app-protocol must be http or tcp") }
            sidecarConfig.appProtocol = appProtocol
        }
        for upstream in upstreams { sidecarConfig.upstreams.append(try Self.parseUpstream(upstream)) }
        if let healthCheck {
            do {
                var check = HealthCheck(probe: try HealthCheck.parse(healthCheck))
                check.interval = healthInterval.duration
                check.timeout = healthTimeout.duration
                guard healthInterval.seconds >= 0.1, healthTimeout.seconds >= 0.01 else {
                    throw ValidationError("--health-interval must be at least 100ms and --health-timeout at least 10ms")
                }
                sidecarConfig.healthCheck = check
            } catch let error as MeshError {
                throw ValidationError("--health-check: \(error.message)")
            }
        }
        let name = sidecarConfig.service
        let sidecar = Sidecar(configuration: sidecarConfig, logger: Logger(label: "mesh.proxy.\(name)"))
        let command = self.command
        let appExit = AppExit()
        try await SignalScope.run {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let ready = AsyncStream<Sidecar.Addresses>.makeStream(bufferingPolicy: .bufferingNewest(1))
                group.addTask {
                    try await sidecar.run { addresses in
                        let upstreams = addresses.upstreams.map { " upstream.\($0.service)=\($0.listen)" }.joined()
                        say("mesh proxy ready: service=\(name) inbound=\(addresses.inbound) outbound=\(addresses.outbound) admin=\(addresses.admin)\(upstreams)")
                        ready.continuation.yield(addresses)
                        ready.continuation.finish()
                    }
                }
                if !command.isEmpty {
                    group.addTask {
                        var iterator = ready.stream.makeAsyncIterator()
                        guard let addresses = await iterator.next() else { return }
                        var environment = ProcessInfo.processInfo.environment
                        environment["MESH_SERVICE"] = name.rawValue
                        environment["MESH_OUTBOUND"] = addresses.outbound.description
                        environment["MESH_ADMIN"] = addresses.admin.description
                        let code = try await AppProcess(command: command, environment: environment).run()
                        appExit.set(code)
                        // The app is done (a job, or it failed): the proxy leaves and drains.
                        throw AppFinished()
                    }
                }
                do {
                    try await group.next()
                } catch is AppFinished {
                    // Handled below: the proxy stops and exits with the app's code.
                }
                group.cancelAll()
                while let _ = try? await group.next() {}
            }
        }
        if let code = appExit.value, code != 0 { throw ExitCode(code) }
    }

    /// `db=15432`, `db=127.0.0.1:15432`, `db=[::1]:15432`; the host defaults to loopback.
    static func parseUpstream(_ text: String) throws -> Sidecar.Upstream {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let service = try? ServiceName(parts[0]) else {
            throw ValidationError("--upstream '\(text)': write SERVICE=[HOST:]PORT, e.g. db=127.0.0.1:15432")
        }
        let address = parts[1].allSatisfy(\.isNumber) ? "127.0.0.1:\(parts[1])" : parts[1]
        guard let listen = try? HostPort(parsing: address) else {
            throw ValidationError("--upstream '\(text)': '\(parts[1])' is not [HOST:]PORT")
        }
        return Sidecar.Upstream(service: service, listen: listen)
    }

    private func controlPlaneConfiguration() throws -> Sidecar.Configuration {
        let controls = control.flatMap(\.addresses)
        guard let service, let app, let inbound, let outbound, let admin, let first = controls.first, let caFile else {
            throw ValidationError("missing flags; see 'mesh proxy --help'")
        }
        // With a state directory the token is only needed the first time.
        let joinToken = try token ?? (tokenFile == nil && stateDir != nil ? ""
            : readFile(tokenFile ?? "", flag: "--token-file").trimmingCharacters(in: .whitespacesAndNewlines))
        var settings = Sidecar.ControlPlaneSettings(control: first, trustBundlePEM: try readFile(caFile, flag: "--ca-file"),
                                                    joinToken: joinToken)
        settings.alternates = Array(controls.dropFirst())
        settings.stateDirectory = stateDir
        settings.advertiseAddress = advertiseAddress ?? ""
        settings.heartbeatInterval = heartbeatInterval.duration
        var config = Sidecar.Configuration(service: try ServiceName(service), app: app, inbound: inbound, outbound: outbound,
                                           admin: admin, source: .controlPlane(settings))
        config.labels = try Labels(parsing: labels)
        return config
    }
}

/// `--control A,B,C`: the control plane replicas' proxy API addresses.
struct ControlAddresses: ExpressibleByArgument {
    var addresses: [HostPort]

    init?(argument: String) {
        let parts = argument.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let parsed = parts.compactMap { try? HostPort(parsing: $0) }
        guard !parts.isEmpty, parsed.count == parts.count else { return nil }
        addresses = parsed
    }
}

/// The app ended; the proxy stops.
private struct AppFinished: Error {}

/// The app's exit code, once it has exited.
private final class AppExit: @unchecked Sendable {
    private let lock = NSLock()
    private var code: Int32?
    func set(_ value: Int32) { lock.withLock { code = value } }
    var value: Int32? { lock.withLock { code } }
}
