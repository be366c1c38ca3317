import ArgumentParser
import Foundation
import MeshCore
import MeshTransport

/// `mesh check`: what needs an operator's attention, and what to do.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check the mesh: roots and SVIDs near expiry, stale proxies, unreachable replicas, clock skew, the store.",
        discussion: "Exits 1 when a check is critical (2 with --strict when one warns), so it fits a cron job or a CI gate.")

    @OptionGroup var adminOptions: AdminOptions

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Flag(help: "Exit non-zero on warnings too.")
    var strict = false

    func run() async throws {
        let response = try await adminOptions.client().get(AdminAPI.checkPath)
        let report = try response.decode(CheckReport.self)
        if json {
            say(response.text.trimmingCharacters(in: .whitespacesAndNewlines))
        } else {
            let marks: [CheckReport.Severity: String] = [.ok: "ok  ", .warning: "WARN", .critical: "CRIT"]
            for finding in report.findings.sorted(by: { $0.severity > $1.severity }) {
                say("\(marks[finding.severity] ?? "?")  \(finding.check): \(finding.message)")
            }
        }
        switch report.worst {
        case .critical: throw ExitCode(1)
        case .warning where strict: throw ExitCode(2)
        default: return
        }
    }
}
