import ArgumentParser
import Foundation
import Logging
import MeshControl
import MeshCore
import MeshProxy
import MeshTransport
import NIOPosix

/// `mesh demo`: a whole mesh on loopback in one process — control plane on its embedded
/// store, web → api → store each behind a sidecar, and a `loadgen` client sending light
/// traffic. Ctrl-C stops everything (sidecars deregister and drain first).
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Start a working mesh on this machine: control plane, three services, sidecars, traffic.")

    @Option(help: "Data directory for the control plane (default: a new temporary directory).")
    var dataDir: String?

    @Option(help: "Port of the entry sidecar's outbound listener that the printed curl command uses (0: any free port).")
    var entryPort = 15001

    @Option(help: "Seconds between requests of the built-in traffic loop (0 turns it off).")
    var trafficInterval = 2.0

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    func run() async throws {
        LoggingSetup.bootstrap(level: logLevel)
        let started = ContinuousClock.now
        let dir = dataDir ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("swiftmesh-demo-\(UUID().uuidString.prefix(8))")
        let entryPort = self.entryPort
        let trafficInterval = self.trafficInterval
        try await SignalScope.run {
            try await DemoRun(dataDir: dir, entryPort: entryPort, trafficInterval: trafficInterval, started: started).run()
        }
        say("demo stopped; data directory kept at \(dir)")
    }
}

/// The demo's moving parts, started in dependency order.
struct DemoRun: Sendable {
    let dataDir: String
    let entryPort: Int
    let trafficInterval: Double
    let started: ContinuousClock.Instant
    let logger = Logger(label: "mesh.demo")

    func run() async throws {
        // 1. Control plane on ephemeral loopback ports. It runs outside the task group so that
        //    on Ctrl-C it stops last, after the sidecars have deregistered.
        var config = ControlPlane.Configuration(dataDirectory: dataDir)
        config.listen = HostPort(host: "127.0.0.1", port: 0)
        config.admin = HostPort(host: "127.0.0.1", port: 0)
        config.heartbeatTTL = 6
        // Charts fill faster than in production (10 s): a newcomer looks within minutes.
        config.historyStep = .seconds(5)
        let control = Ready<ControlPlane.Addresses>()
        let controlTask = Task {
            do {
                try await ControlPlane(configuration: config, logger: Logger(label: "mesh.control")).run { control.set($0) }
            } catch {
                control.fail(error)
                throw error
            }
        }
        let outcome: Result<Void, Error>
        do {
            let addresses = try await control.wait()
            try await runServices(addresses: addresses)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        controlTask.cancel()
        _ = await controlTask.result
        try outcome.get()
    }

    private func runServices(addresses: ControlPlane.Addresses) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            let adminToken = try String(contentsOfFile: "\(dataDir)/admin.token", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let bundle = try String(contentsOfFile: "\(dataDir)/ca.pem", encoding: .utf8)
            let admin = APIClient(target: addresses.admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil,
                                  bearerToken: adminToken)

            // 2. Zero trust from the start: default deny, and exactly the calls the demo makes.
            let calls: [(destination: String, caller: String)] = [("web", "loadgen"), ("api", "web"), ("store", "api")]
            let policies = calls.map { (destination: String, caller: String) -> PolicyDocument in
                PolicyDocument(name: "\(caller)-to-\(destination)", spec: .init(
                    selector: .init(service: destination),
                    rules: [.init(from: [.init(services: [caller])], to: [.init(methods: ["GET"])])]))
            }
            _ = try await admin.send(.POST, AdminAPI.resourcesPath, json: policies).decode([AdminAPI.ApplyResult].self)

            // 3. Apps and their sidecars: store, then api, then web, then the loadgen client.
            let chain: [(name: String, calls: String?)] = [("store", nil), ("api", "store"), ("web", "api"), ("loadgen", nil)]
            var lines: [String] = []
            var entry: HostPort?
            for (name, calls) in chain {
                let outboundBox = Ready<HostPort>()
                let app = try await DemoApps.start(
                    name: name, downstream: calls.map { ($0, { outboundBox.peek() }) }, logger: logger)
                tasks.addTask { await app.run() }
                let token = try await admin.send(.POST, AdminAPI.tokensPath,
                                                 json: AdminAPI.CreateTokenRequest(service: try ServiceName(name), ttlSeconds: 60))
                    .decode(AdminAPI.CreateTokenResponse.self).token
                var settings = Sidecar.ControlPlaneSettings(control: addresses.listen, trustBundlePEM: bundle, joinToken: token)
                settings.heartbeatInterval = .seconds(2)
                var proxy = Sidecar.Configuration(
                    service: try ServiceName(name), app: app.localAddress,
                    inbound: HostPort(host: "127.0.0.1", port: 0),
                    outbound: HostPort(host: "127.0.0.1", port: name == "loadgen" ? entryPort : 0),
                    admin: HostPort(host: "127.0.0.1", port: 0), source: .controlPlane(settings))
                proxy.labels = Labels(["app": name, "version": "v1"])
                let ready = Ready<Sidecar.Addresses>()
                tasks.addTask {
                    try await Sidecar(configuration: proxy, logger: Logger(label: "mesh.proxy.\(name)")).run { ready.set($0) }
                }
                let sidecar = try await ready.wait()
                outboundBox.set(sidecar.outbound)
                if name == "loadgen" { entry = sidecar.outbound }
                lines.append("  \(name.padding(toLength: 8, withPad: " ", startingAt: 0)) app \(app.localAddress)  sidecar inbound \(sidecar.inbound)  outbound \(sidecar.outbound)  admin \(sidecar.admin)")
            }
            guard let entry else { return }

            // 4. Tell the newcomer what runs and how to poke it.
            say("""
                SwiftMesh demo is running (data directory \(dataDir)):
                  control  proxy API \(addresses.listen) (mTLS)  admin API \(addresses.admin)
                \(lines.joined(separator: "\n"))

                Send a request through the mesh (loadgen's sidecar → web → api → store, mTLS on every hop):
                  curl -s -H 'Host: web' http://\(entry)/

                List services:  mesh services --admin \(addresses.admin) --data-dir \(dataDir)
                Policies:       mesh get policies --admin \(addresses.admin) --data-dir \(dataDir)
                Why denied?     mesh explain --from loadgen --to store --method GET --path /inventory --admin \(addresses.admin) --data-dir \(dataDir)
                Golden metrics: mesh stat --admin \(addresses.admin) --data-dir \(dataDir)
                The slow hop:   mesh edges --admin \(addresses.admin) --data-dir \(dataDir)
                  (one request in five goes to /checkout, which store answers slowly and sometimes with 503;
                   one in ten is loadgen calling store directly, which no policy allows)
                Dashboard:      \(DashboardURL.make(admin: addresses.admin, token: adminToken))
                Press Ctrl-C to stop.
                """)
            // 5. Light traffic, and the time to the first request that crossed the whole mesh.
            tasks.addTask { try await traffic(entry: entry) }
            try await tasks.next()
            tasks.cancelAll()
        }
    }

    private func traffic(entry: HostPort) async throws {
        var client = APIClient(target: entry, group: MultiThreadedEventLoopGroup.singleton, tls: nil)
        client.hostHeader = "web"
        // A caller going where no policy lets it: the dashboard and `mesh explain` show why.
        var intruder = client
        intruder.hostHeader = "store"
        var ok = 0, failed = 0, reported = false, sent = 0
        while !Task.isCancelled {
            sent += 1
            if sent % 10 == 0 {
                _ = try? await intruder.get("/inventory")
            }
            // One request in five takes store's slow, flaky checkout path.
            let path = sent % 5 == 0 ? "/checkout" : "/"
            if let response = try? await client.get(path), response.status == .ok {
                ok += 1
                if !reported {
                    reported = true
                    let elapsed = ContinuousClock.now - started
                    say("first request through the mesh succeeded \(elapsed.formatted(.units(allowed: [.seconds, .milliseconds]))) after start")
                }
            } else {
                failed += 1
            }
            if (ok + failed) % 30 == 0 { say("traffic: \(ok) ok, \(failed) failed") }
            if trafficInterval <= 0 { break }
            try await Task.sleep(for: .milliseconds(Int(trafficInterval * 1000)))
        }
        // Keep the group alive when the loop is off.
        while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
    }
}
