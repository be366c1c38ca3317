import ArgumentParser
import Foundation
import MeshCore
import MeshTransport

/// `mesh tap SERVICE`: live requests of a service with their hop timings.
struct TapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "Watch live requests to and from a service, with their hop timings (sampled and bounded).",
        discussion: """
            The service's proxies sample matching requests (at most --rate per second each) and \
            send them through the control plane while the command runs; they stop within 30 s \
            if the control plane goes away. Status notes (proxies sampling, requests left out) \
            go to stderr, requests to stdout.
            """)

    @Argument(help: "The service to tap: requests to it and the calls it makes.")
    var service: String

    @Option(help: "Only calls to this service.")
    var to: String?

    @Option(help: "Only calls from this service ('unauthenticated': plaintext callers).")
    var from: String?

    @Option(help: "Only this HTTP method.")
    var method: String?

    @Option(help: "Only paths starting with this prefix.")
    var path: String?

    @Option(help: "At most this many requests per second from each proxy (1 to 100).")
    var rate = 20

    @Option(help: "Stop after this many requests.")
    var max: Int?

    @Option(name: .shortAndLong, help: "Output format: table (one line per request) or json (one object per line).")
    var output = "table"

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ["table", "json"].contains(output) else { throw ValidationError("-o must be table or json") }
        guard (1...TapOrder.maxRate).contains(rate) else { throw ValidationError("--rate must be 1 to \(TapOrder.maxRate)") }
        if let max, max <= 0 { throw ValidationError("--max must be positive") }
    }

    func run() async throws {
        var query = [("service", service), ("rate", "\(rate)")]
        for (key, value) in [("to", to), ("from", from), ("method", method), ("path", path), ("limit", max.map(String.init))] {
            if let value { query.append((key, value)) }
        }
        let target = AdminAPI.tapPath + "?" + query.map { "\($0.0)=\(Self.encode($0.1))" }.joined(separator: "&")
        let client = try adminOptions.client()
        let json = output == "json"
        let notes = StatusNotes(service: service, rate: rate)
        // Status lines come every 2 s: ten silent seconds mean the control plane is gone.
        try await client.streamLines(target, readTimeout: .seconds(10)) { line in
            if line.contains("\"type\":\"status\"") {
                if let status = try? JSONCoding.decoder.decode(TapStatus.self, from: Data(line.utf8)) { notes.show(status) }
                return
            }
            if json {
                Self.write(String(line))
            } else if let event = try? JSONCoding.decoder.decode(TapEvent.self, from: Data(line.utf8)) {
                Self.write(Self.format(event))
            }
        }
    }

    /// Percent-encodes a query value (everything but unreserved characters and '/').
    static func encode(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/")) ?? value
    }

    /// One line, flushed at once: a tap is read as it happens, also through a pipe.
    static func write(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    private static let time: DateFormatter = {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm:ss"
        return formatter
    }()

    /// `10:04:05 in  web → api  GET /checkout  503  182.31ms  proxy 0.12ms app 182.19ms  mtls  api-host-x1  trace=…`
    static func format(_ event: TapEvent) -> String {
        let hopOrder = ["caller_proxy", "network", "peer_proxy", "proxy", "app"]
        let hops = (event.hopsMs ?? [:]).sorted { (hopOrder.firstIndex(of: $0.key) ?? 9) < (hopOrder.firstIndex(of: $1.key) ?? 9) }
            .map { "\($0.key.replacingOccurrences(of: "_", with: "-")) \(TrafficFormat.ms($0.value))" }.joined(separator: " ")
        var parts = [
            time.string(from: event.at), event.direction == "inbound" ? "in " : "out",
            "\(event.source) → \(event.destination)", "\(event.method) \(event.path)",
            event.status == 0 ? "---" : "\(event.status)", TrafficFormat.ms(event.durationMs),
        ]
        if !hops.isEmpty { parts.append("[\(hops)]") }
        parts.append(event.tls ? "mtls" : "plaintext")
        if let decision = event.decision, decision != "allowed-by-policy" { parts.append("\(decision)\(event.policy.map { " (\($0))" } ?? "")") }
        if let id = event.requestID { parts.append("request-id=\(id)") }
        if let trace = event.traceID { parts.append("trace=\(trace)") }
        parts.append(event.instance)
        return Terminal.printable(parts.joined(separator: "  "))
    }
}

/// What `mesh tap` tells on stderr: who samples, and when requests were left out.
private final class StatusNotes: @unchecked Sendable {
    let service: String
    let rate: Int
    private var shown: TapStatus?
    init(service: String, rate: Int) {
        self.service = service
        self.rate = rate
    }

    func show(_ status: TapStatus) {
        defer { shown = status }
        guard let previous = shown else {
            note("tapping \(service): \(status.proxies) \(status.proxies == 1 ? "proxy" : "proxies") sampling at most \(rate) requests/s each; Ctrl-C to stop")
            return
        }
        if status.proxies != previous.proxies { note("\(status.proxies) \(status.proxies == 1 ? "proxy" : "proxies") of \(service) sampling now") }
        if status.skipped > previous.skipped {
            note("\(status.skipped - previous.skipped) more requests over the rate were left out (\(status.skipped) in all; raise --rate or narrow with --to/--from/--path)")
        }
        if status.dropped > previous.dropped { note("\(status.dropped - previous.dropped) requests lost on the way (slow reader or full buffers)") }
    }

    private func note(_ text: String) {
        FileHandle.standardError.write(Data(("# " + text + "\n").utf8))
    }
}

/// Text from the network made safe for a terminal: control characters shown escaped.
enum Terminal {
    static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value) {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
