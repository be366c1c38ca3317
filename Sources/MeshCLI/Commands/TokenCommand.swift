import ArgumentParser
import Foundation
import MeshCore
import MeshTransport
import NIOPosix

/// `mesh token create`: a single-use join token for one service identity.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage join tokens.", subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a single-use join token bound to a service identity; prints the token.")

        @Option(help: "Service the token lets a proxy join as.")
        var service: String

        @Option(help: "How long the token stays valid, e.g. 10m, 1h.")
        var ttl = DurationArgument(seconds: 600)

        @OptionGroup var adminOptions: AdminOptions

        func run() async throws {
            let name: ServiceName
            do { name = try ServiceName(service) } catch let error as MeshError { throw ValidationError("--service: \(error.message)") }
            let client = APIClient(target: adminOptions.admin, group: MultiThreadedEventLoopGroup.singleton, tls: nil,
                                   bearerToken: try adminOptions.token())
            let response = try await client.send(.POST, AdminAPI.tokensPath,
                                                 json: AdminAPI.CreateTokenRequest(service: name, ttlSeconds: ttl.seconds))
                .decode(AdminAPI.CreateTokenResponse.self)
            say(response.token)
        }
    }
}
