import ArgumentParser
import Foundation
import MeshCore
import MeshTransport
import NIOPosix

/// `mesh ca status` and `mesh ca rotate`: the mesh's roots and their rotation.
struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Show the mesh CA's roots, or rotate to a new root without downtime.",
        subcommands: [Status.self, Rotate.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "The roots, which one signs, and where a rotation stands.")

        @OptionGroup var adminOptions: AdminOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        func run() async throws {
            let response = try await adminOptions.client().get(AdminAPI.caPath)
            let status = try response.decode(CAStatus.self)
            say(json ? response.text.trimmingCharacters(in: .whitespacesAndNewlines) : CAText.render(status, now: Date()))
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Rotate the mesh to a new root: add it to every bundle, sign with it, retire the old one.",
            discussion: """
                Each step waits until every registered proxy has taken the previous one, so no \
                connection ever meets a certificate its peer does not trust. Proxies renew onto \
                the new root within the control plane's --rotation-renew-window. Update the \
                ca.pem your hosts pass as --ca-file afterwards (new proxies join with it).
                """)

        @OptionGroup var adminOptions: AdminOptions

        @Flag(help: "Wait until the rotation is done, printing each step.")
        var wait = false

        @Option(help: "With --wait: give up after this long.")
        var timeout = DurationArgument(seconds: 600)

        func run() async throws {
            let client = try adminOptions.client()
            var status = try await client.send(.POST, AdminAPI.caRotatePath, json: [String: String]()).decode(CAStatus.self)
            say("rotation started: phase \(status.phase)")
            guard wait else { return }
            let deadline = Date().addingTimeInterval(timeout.seconds)
            var phase = status.phase
            var lastPending = -1
            while status.phase != "stable" {
                guard Date() < deadline else {
                    throw MeshError(.unavailable, "the rotation is still in phase \(status.phase) after \(timeout); it goes on by itself: follow it with 'mesh ca status' (waiting for: \(status.pending.prefix(5).map(\.instance).joined(separator: ", ")))")
                }
                try await Task.sleep(for: .milliseconds(500))
                status = try await client.get(AdminAPI.caPath).decode(CAStatus.self)
                if status.phase != phase || status.pending.count != lastPending {
                    say("phase \(status.phase): waiting for \(status.pending.count) of \(status.instances) instances")
                    phase = status.phase
                    lastPending = status.pending.count
                }
            }
            say("rotation done: signing root \(status.roots.first { $0.signing }?.fingerprint ?? "?")")
        }
    }
}

enum CAText {
    static func render(_ status: CAStatus, now: Date) -> String {
        var rows = [["ROOT", "SIGNS", "VALID UNTIL", "EXPIRES IN"]]
        for root in status.roots {
            rows.append([root.fingerprint, root.signing ? "yes" : "no", ISO8601DateFormatter().string(from: root.notAfter),
                         ServicesTable.format(seconds: root.notAfter.timeIntervalSince(now))])
        }
        var text = "phase: \(status.phase) since \(ISO8601DateFormatter().string(from: status.since))\n" + Table.render(rows)
        if !status.pending.isEmpty {
            text += "\nwaiting for \(status.pending.count) of \(status.instances) instances:\n"
            text += Table.render([["INSTANCE", "SERVICE", "WAITING FOR"]] + status.pending.prefix(50).map { [$0.instance, $0.service, $0.waiting] })
        }
        return text
    }
}
