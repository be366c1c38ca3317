import Foundation
import MeshCore
import MeshTesting
import MeshTransport
import XCTest

/// The dashboard in a real browser (Debian's headless Chromium) against a real `mesh demo`:
/// the graph shows the demo's services, an edge's numbers are the ones `mesh edges -o json`
/// gives, the per-service page draws its charts, and a screenshot is kept.
final class DashboardTests: XCTestCase {
    func testDashboardShowsTheDemoMeshAsMeshEdgesDoes() async throws {
        let chromium = try Chromium.find()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-dashboard-\(UUID().uuidString.prefix(8))")
        let demo = try MeshProcess(["demo", "--entry-port", "0", "--traffic-interval", "0.1", "--data-dir", directory.path],
                                   logDirectory: FileManager.default.temporaryDirectory)
        defer { try? FileManager.default.removeItem(at: directory) }
        do {
            _ = try await demo.waitForLine(prefix: "first request through the mesh succeeded")
            let dashboardLine = try XCTUnwrap(demo.output.first { $0.hasPrefix("Dashboard:") }, "mesh demo prints the dashboard URL")
            let url = String(try XCTUnwrap(dashboardLine.split(separator: " ").last))
            XCTAssertTrue(url.hasPrefix("http://127.0.0.1:") && url.contains("/dashboard/#token=mat_"), url)
            let admin = try XCTUnwrap(url.split(separator: "/").dropFirst().first.map(String.init))
            let cli = ["--admin", admin, "--data-dir", directory.path]

            // The page itself loads without the token, the data does not.
            let page = try await plainGet(try HostPort(parsing: admin), "/dashboard/")
            XCTAssertEqual(page.status, .ok)
            XCTAssertTrue(page.headers.first(name: "content-security-policy")?.contains("script-src 'self'") ?? false)
            let data = try await plainGet(try HostPort(parsing: admin), AdminAPI.edgesPath)
            XCTAssertEqual(data.status, .unauthorized)

            // Wait until web → api has traffic with hop timings in the window.
            _ = try await eventually(timeout: .seconds(30), interval: .milliseconds(500)) {
                guard let row = try await Self.edge("web", "api", cli: cli), row.hopsMs != nil else {
                    throw TestFailure("mesh edges has no web → api row with hop timings yet")
                }
                return row
            }

            // An edge's numbers in the graph are what `mesh edges -o json` says. The proxies
            // report every 2 s, so `mesh edges` is polled all through the browser's visit and
            // the page must show one of the answers seen meanwhile.
            let overviewURL = url.replacingOccurrences(of: "/dashboard/#", with: "/dashboard/?refresh=0#")
            var matched = false
            var attempts: [String] = []
            for _ in 0..<4 where !matched {
                let poller = EdgePoller(cli: cli)
                let polling = Task { await poller.run() }
                try await Task.sleep(for: .milliseconds(300))
                let dom = try await chromium.dumpDOM(overviewURL)
                try await Task.sleep(for: .milliseconds(300))
                polling.cancel()
                let seen = await polling.value

                for service in ["loadgen", "web", "api", "store"] {
                    XCTAssertTrue(dom.contains("data-service=\"\(service)\""), "the graph has a node for \(service)")
                }
                let edge = try XCTUnwrap(HTMLEdge.find(in: dom, source: "web", destination: "api"), "the graph has the edge web → api:\n\(dom.prefix(3000))")
                XCTAssertEqual(edge.attributes["data-mtls"], "true")
                if let row = seen.first(where: { edge.matches($0) }) {
                    matched = true
                    XCTAssertTrue(edge.labelMatches(row), "label '\(edge.label)' shows \(row.requestsPerSecond) rps and p99 \(row.p99Ms ?? -1) ms")
                } else {
                    attempts.append("page: \(edge.attributes) '\(edge.label)'; mesh edges: \(seen.map { "\($0.requestsPerSecond)/\($0.p99Ms ?? -1)" })")
                }
                XCTAssertTrue(dom.contains("class=\"edge") && dom.contains("data-source=\"loadgen\" data-destination=\"store\""),
                              "the demo's intruder (loadgen → store, denied) is on the graph")
            }
            XCTAssertTrue(matched, "the graph's web → api never showed what mesh edges said:\n\(attempts.joined(separator: "\n"))")

            // The per-service page: cards, charts with points (the demo's history step is 5 s),
            // the hop attribution and the denials of the intruder.
            let storePage = try await eventually(timeout: .seconds(30), interval: .seconds(1)) {
                let dom = try await chromium.dumpDOM(overviewURL + "&service=store")
                // A line: at least two history points.
                guard dom.contains("class=\"series rps\""), dom.firstMatch(of: #/d="M [0-9.]+ [0-9.]+ L /#) != nil else {
                    throw TestFailure("the requests/s chart of store has no line yet")
                }
                return dom
            }
            XCTAssertTrue(storePage.contains("class=\"series success\""), "success-rate chart")
            XCTAssertTrue(storePage.contains("class=\"series p99\""), "latency chart")
            XCTAssertTrue(storePage.contains("api → store"), "hop attribution of api → store")
            XCTAssertTrue(storePage.contains("denied-no-matching-allow"), "the intruder's denials are listed")
            XCTAssertTrue(storePage.contains("/checkout"), "busiest paths include the slow /checkout")

            // A screenshot of the overview, kept for a human to look at.
            let shot = Chromium.artifacts.appendingPathComponent("dashboard-overview.png")
            try await chromium.screenshot(overviewURL, to: shot, width: 1400, height: 1000)
            let png = try Data(contentsOf: shot)
            XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "a PNG file")
            XCTAssertEqual(png.count >= 24 ? png[16..<24].map { $0 } : [], [0, 0, 0x05, 0x78, 0, 0, 0x03, 0xE8], "1400 × 1000 pixels")
            XCTAssertGreaterThan(png.count, 20_000, "a page with content, not a blank one")
            print("dashboard screenshot: \(shot.path)")
        } catch {
            XCTFail("\(error)\n\(demo.log.suffix(4000))")
        }
        let status = await demo.stop(signal: SIGINT)
        XCTAssertEqual(status, 0, demo.log.suffix(3000).description)
    }

    /// `mesh edges -o json`'s row for one edge.
    static func edge(_ source: String, _ destination: String, cli: [String]) async throws -> EdgeStat? {
        let run = try await MeshProcess.runToEnd(["edges", "-o", "json"] + cli)
        guard run.status == 0 else { throw TestFailure("mesh edges failed: \(run.err)") }
        let rows = try JSONCoding.decoder.decode([EdgeStat].self, from: Data(run.out.utf8))
        return rows.first { $0.source == source && $0.destination == destination && $0.mtls }
    }
}

/// Runs `mesh edges -o json` over and over and keeps every distinct web → api row it saw.
private actor EdgePoller {
    let cli: [String]
    private var seen: [EdgeStat] = []
    init(cli: [String]) { self.cli = cli }

    func run() async -> [EdgeStat] {
        repeat {
            if let row = try? await DashboardTests.edge("web", "api", cli: cli), !seen.contains(row) { seen.append(row) }
            try? await Task.sleep(for: .milliseconds(100))
        } while !Task.isCancelled
        if let row = try? await DashboardTests.edge("web", "api", cli: cli), !seen.contains(row) { seen.append(row) }
        return seen
    }
}

/// One `<g class="edge …">` of the graph as Chromium serialized it.
private struct HTMLEdge {
    var attributes: [String: String]
    var label: String

    static func find(in dom: String, source: String, destination: String) -> HTMLEdge? {
        var rest = dom[...]
        while let start = rest.range(of: "<g class=\"edge") {
            let tail = rest[start.lowerBound...]
            guard let close = tail.range(of: ">"), let end = tail.range(of: "</g>") else { return nil }
            let tag = tail[..<close.upperBound]
            var attributes: [String: String] = [:]
            for match in tag.matches(of: #/([a-z0-9-]+)="([^"]*)"/#) {
                attributes[String(match.1)] = String(match.2)
            }
            if attributes["data-source"] == source && attributes["data-destination"] == destination {
                let body = tail[close.upperBound..<end.lowerBound]
                let label = body.firstMatch(of: #/<text[^>]*class="edge-label"[^>]*>([^<]*)</text>/#).map { String($0.1) } ?? ""
                return HTMLEdge(attributes: attributes, label: label)
            }
            rest = tail[end.upperBound...]
        }
        return nil
    }

    /// The raw figures the page drew equal the row (both are the same JSON numbers).
    func matches(_ row: EdgeStat) -> Bool {
        func same(_ attribute: String, _ value: Double?) -> Bool {
            let text = attributes[attribute] ?? ""
            guard let value else { return text.isEmpty }
            guard let shown = Double(text) else { return false }
            return abs(shown - value) <= 1e-9 * max(1, abs(value))
        }
        return same("data-rps", row.requestsPerSecond) && same("data-p99", row.p99Ms) && same("data-success", row.successRate)
    }

    /// The label ("3.93 rps · p99 242 ms") shows the row's rate and p99, rounded as printed.
    func labelMatches(_ row: EdgeStat) -> Bool {
        guard let match = label.firstMatch(of: /^([0-9.]+) rps · p99 ([0-9.]+) ms/), let p99 = row.p99Ms else { return false }
        func close(_ text: Substring, _ value: Double) -> Bool {
            guard let shown = Double(text) else { return false }
            let decimals = text.split(separator: ".").dropFirst().first?.count ?? 0
            return abs(shown - value) <= 0.5 * pow(10, -Double(decimals)) + 1e-9
        }
        return close(match.1, row.requestsPerSecond) && close(match.2, p99)
    }
}

/// Debian's headless Chromium (`chromium-headless-shell` or `chromium`).
struct Chromium {
    let binary: String

    /// Where screenshots go: MESH_TEST_ARTIFACTS, or a folder in the temporary directory.
    static var artifacts: URL {
        let path = ProcessInfo.processInfo.environment["MESH_TEST_ARTIFACTS"]
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-test-artifacts").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return URL(fileURLWithPath: path)
    }

    static func find() throws -> Chromium {
        let candidates = [ProcessInfo.processInfo.environment["CHROMIUM"], "/usr/bin/chromium-headless-shell", "/usr/bin/chromium"]
        if let binary = candidates.compactMap({ $0 }).first(where: FileManager.default.isExecutableFile) {
            return Chromium(binary: binary)
        }
        // CI installs Debian's chromium-headless-shell and sets MESH_REQUIRE_TOOLS=1.
        if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
            throw TestFailure("headless Chromium is missing; install Debian's chromium-headless-shell (.ci/run does)")
        }
        throw XCTSkip("headless Chromium not installed (apt-get install chromium-headless-shell)")
    }

    /// The DOM after the page's script ran (its fetches complete within the virtual time).
    func dumpDOM(_ url: String) async throws -> String {
        try await run(["--dump-dom", url])
    }

    func screenshot(_ url: String, to file: URL, width: Int, height: Int) async throws {
        _ = try await run(["--screenshot=\(file.path)", "--window-size=\(width),\(height)", "--hide-scrollbars", url])
    }

    private func run(_ arguments: [String]) async throws -> String {
        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("swiftmesh-chromium-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: profile) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        process.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(profile.path)",
                             "--virtual-time-budget=5000", "--timeout=20000"] + arguments
        let out = Pipe()
        // Chromium's own chatter goes to a file: a full stderr pipe would stall it.
        let errFile = profile.appendingPathExtension("log")
        FileManager.default.createFile(atPath: errFile.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errFile) }
        process.standardOutput = out
        process.standardError = try FileHandle(forWritingTo: errFile)
        try process.run()
        let watchdog = Task {
            try await Task.sleep(for: .seconds(60))
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errors = (try? Data(contentsOf: errFile)) ?? Data()
        watchdog.cancel()
        guard process.terminationStatus == 0 else {
            throw TestFailure("chromium \(arguments.first ?? "") failed with \(process.terminationStatus): \(String(decoding: errors.suffix(2000), as: UTF8.self))")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
