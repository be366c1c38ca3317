import ArgumentParser
import Foundation
import MeshCore
import MeshTransport
import NIOPosix

/// `mesh services`: services, instances, health and certificate expiry.
struct ServicesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "services", abstract: "List services, their instances, health and certificate expiry.")

    @OptionGroup var adminOptions: AdminOptions

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        let client = APIClient(target: adminOptions.admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil,
                               bearerToken: try adminOptions.token())
        let response = try await client.get(AdminAPI.servicesPath)
        let listing = try response.decode([AdminAPI.ServiceListing].self)
        if json {
            say(response.text.trimmingCharacters(in: .whitespacesAndNewlines))
            return
        }
        say(ServicesTable.render(listing, now: Date()))
    }
}

/// Renders the services listing as an aligned table.
enum ServicesTable {
    static func render(_ listing: [AdminAPI.ServiceListing], now: Date) -> String {
        var rows = [["SERVICE", "INSTANCE", "ENDPOINT", "HEALTH", "MTLS", "CERT EXPIRES IN", "LABELS"]]
        for service in listing {
            if service.instances.isEmpty { rows.append([service.service.rawValue, "-", "-", "-", "-", "-", "-"]) }
            for instance in service.instances {
                let expiry = instance.certificateExpiry.map { format(seconds: $0.timeIntervalSince(now)) } ?? "?"
                let labels = instance.labels.values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                rows.append([service.service.rawValue, instance.id, instance.endpoint, !instance.healthy ? "stale" : instance.appHealthy == false ? "app-unhealthy" : "healthy",
                             instance.mtls ?? "?", expiry, labels.isEmpty ? "-" : labels])
            }
        }
        return Table.render(rows)
    }

    static func format(seconds: Double) -> String {
        if seconds <= 0 { return "expired" }
        let s = Int(seconds)
        if s >= 86400 { return "\(s / 86400)d\((s % 86400) / 3600)h" }
        if s >= 3600 { return "\(s / 3600)h\((s % 3600) / 60)m" }
        if s >= 60 { return "\(s / 60)m\(s % 60)s" }
        return "\(s)s"
    }
}
