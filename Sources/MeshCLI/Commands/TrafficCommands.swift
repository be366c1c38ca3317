import ArgumentParser
import Foundation
import MeshCore
import MeshTransport

/// `mesh stat [SERVICE]`: golden metrics per service, from the proxies' traffic reports.
struct StatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat", abstract: "Success rate, requests per second, latency percentiles and mTLS share per service.")

    @Argument(help: "One service (all when omitted).")
    var service: String?

    @Option(help: "Time window, 10s to 5m.")
    var window = DurationArgument(seconds: 60)

    @Option(name: .shortAndLong, help: "Output format: table or json.")
    var output = "table"

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ["table", "json"].contains(output) else { throw ValidationError("-o must be table or json") }
        guard (10...300).contains(window.seconds) else { throw ValidationError("--window must be 10s to 5m") }
    }

    func run() async throws {
        var path = AdminAPI.statPath + "?window=\(Int(window.seconds))"
        if let service { path += "&service=\(service)" }
        let response = try await adminOptions.client().get(path)
        let rows = try response.decode([ServiceStat].self)
        if output == "json" {
            say(String(decoding: try JSONCoding.encoder.encode(rows), as: UTF8.self))
            return
        }
        var table = [["SERVICE", "INSTANCES", "SUCCESS", "RPS", "P50", "P95", "P99", "MTLS", "DENIED"]]
        for row in rows {
            table.append([row.service, "\(row.instances)", TrafficFormat.percent(row.successRate), TrafficFormat.rate(row.requestsPerSecond),
                          TrafficFormat.ms(row.p50Ms), TrafficFormat.ms(row.p95Ms), TrafficFormat.ms(row.p99Ms),
                          TrafficFormat.percent(row.mtlsShare), "\(row.denials)"])
        }
        say(Table.render(table))
    }
}

/// `mesh edges`: who calls whom, with identities, mTLS, rate, errors, latency and denials.
struct EdgesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edges", abstract: "Who calls whom: identities, mTLS, request rate, errors, latency, policy denials, hop times.")

    @Option(help: "Time window, 10s to 5m.")
    var window = DurationArgument(seconds: 60)

    @Option(name: .shortAndLong, help: "Output format: table or json.")
    var output = "table"

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ["table", "json"].contains(output) else { throw ValidationError("-o must be table or json") }
        guard (10...300).contains(window.seconds) else { throw ValidationError("--window must be 10s to 5m") }
    }

    func run() async throws {
        let rows = try await adminOptions.client().get(AdminAPI.edgesPath + "?window=\(Int(window.seconds))").decode([EdgeStat].self)
        if output == "json" {
            say(String(decoding: try JSONCoding.encoder.encode(rows), as: UTF8.self))
            return
        }
        var table = [["FROM", "TO", "FROM IDENTITY", "MTLS", "RPS", "SUCCESS", "P50", "P99", "DENIED", "APP", "MESH"]]
        for row in rows {
            // The mesh's own share: everything but the destination app.
            let mesh = row.hopsMs.map { hops in hops.filter { $0.key != "app" }.values.reduce(0, +) }
            table.append([row.source, row.destination, row.sourceIdentity, row.mtls ? "yes" : "no", TrafficFormat.rate(row.requestsPerSecond),
                          TrafficFormat.percent(row.successRate), TrafficFormat.ms(row.p50Ms), TrafficFormat.ms(row.p99Ms), "\(row.denials)",
                          TrafficFormat.ms(row.hopsMs?["app"]), TrafficFormat.ms(mesh)])
        }
        say(Table.render(table))
    }
}

/// `mesh top SERVICE`: the busiest paths, refreshed every two seconds.
struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top", abstract: "A live view of a service's busiest paths (requests per second, success, latency).")

    @Argument(help: "The service.")
    var service: String

    @Option(help: "Time window, 10s to 5m.")
    var window = DurationArgument(seconds: 10)

    @Flag(help: "Print once and exit (no refreshing screen).")
    var once = false

    @Option(name: .shortAndLong, help: "Output format: table or json (json prints once).")
    var output = "table"

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ["table", "json"].contains(output) else { throw ValidationError("-o must be table or json") }
        guard (10...300).contains(window.seconds) else { throw ValidationError("--window must be 10s to 5m") }
    }

    func run() async throws {
        let client = try adminOptions.client()
        let path = AdminAPI.topPath + "?service=\(service)&window=\(Int(window.seconds))"
        while true {
            let rows = try await client.get(path).decode([PathStat].self)
            if output == "json" {
                say(String(decoding: try JSONCoding.encoder.encode(rows), as: UTF8.self))
                return
            }
            var table = [["METHOD", "PATH", "RPS", "SUCCESS", "P50", "P99"]]
            for row in rows {
                table.append([row.method, row.path, TrafficFormat.rate(row.requestsPerSecond), TrafficFormat.percent(row.successRate),
                              TrafficFormat.ms(row.p50Ms), TrafficFormat.ms(row.p99Ms)])
            }
            if once {
                say(Table.render(table))
                return
            }
            // Clear the screen and redraw, like top(1).
            say("\u{1B}[H\u{1B}[2J\(service): busiest paths over the last \(window) (Ctrl-C to stop)\n\n" + Table.render(table))
            try await Task.sleep(for: .seconds(2))
        }
    }
}

enum TrafficFormat {
    static func percent(_ value: Double?) -> String {
        value.map { String(format: "%.2f%%", $0 * 100) } ?? "-"
    }

    static func rate(_ value: Double) -> String {
        String(format: "%.1f", value)
    }

    static func ms(_ value: Double?) -> String {
        guard let value else { return "-" }
        return value < 10 ? String(format: "%.2fms", value) : String(format: "%.0fms", value)
    }
}
