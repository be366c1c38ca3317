import ArgumentParser
import Foundation
import MeshCore
import MeshTransport

/// `mesh dashboard`: prints the dashboard's address with the admin token in its fragment.
struct DashboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Print the address of the web dashboard (service graph, golden metrics, hop attribution, denials, certificates).",
        discussion: """
            The dashboard is served by the control plane on its admin address. The printed URL \
            carries the admin token after '#', which browsers never send to a server; the page \
            keeps it in the tab's session storage. Treat the URL like the token itself.
            """)

    @OptionGroup var adminOptions: AdminOptions

    func run() async throws {
        let token = try adminOptions.token()
        // Check the address and the token now rather than leave the operator with a login form.
        _ = try await adminOptions.client().get(AdminAPI.servicesPath)
        say(DashboardURL.make(admin: adminOptions.admin, token: token))
    }
}

/// The dashboard's address for an admin API address and token.
enum DashboardURL {
    static func make(admin: HostPort, token: String) -> String {
        // A wildcard listen address is not a place a browser can go to.
        let host = ["0.0.0.0", "::", ""].contains(admin.host) ? "127.0.0.1" : admin.host
        let shown = host.contains(":") ? "[\(host)]" : host
        let safe = token.allSatisfy { $0.isLetter || $0.isNumber || "-_.~".contains($0) }
        return "http://\(shown):\(admin.port)/dashboard/#token=\(safe ? token : token.addingPercentEncodingForFragment)"
    }
}

private extension String {
    var addingPercentEncodingForFragment: String {
        var out = ""
        for byte in utf8 {
            let char = Character(UnicodeScalar(byte))
            if byte < 0x80, char.isLetter || char.isNumber || "-_.~".contains(char) { out.append(char) } else { out += String(format: "%%%02X", byte) }
        }
        return out
    }
}
