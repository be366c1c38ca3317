import Foundation
import MeshCore
import NIOSSL
import PostgresNIO

extension PostgresStore {
    /// What a `postgres://` URL says: where, who, which database, and how to use TLS.
    struct Settings {
        var configuration: PostgresClient.Configuration
        /// The URL without its password, for messages.
        var display: String
        private var mode: String

        /// The same target for one direct connection.
        func probeConfiguration() throws -> PostgresConnection.Configuration {
            let tls: PostgresConnection.Configuration.TLS
            switch mode {
            case "disable": tls = .disable
            case "prefer": tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
            default: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
            var probe = PostgresConnection.Configuration(host: configuration.host ?? "", port: configuration.port ?? 5432,
                                                         username: configuration.username, password: configuration.password,
                                                         database: configuration.database, tls: tls)
            probe.options.connectTimeout = .seconds(5)
            return probe
        }

        init(url: String) throws {
            guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? ""),
                  let host = components.host, !host.isEmpty else {
                // The URL may hold a password: only its start is repeated.
                let shown = url.split(separator: "@").count > 1 ? String(url.prefix { $0 != ":" }) + "://…" : url
                throw MeshError(.invalidRequest, "'\(shown)' is not a PostgreSQL URL; write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require] (percent-encode @ : / # in the password, or pass it in PGPASSWORD)")
            }
            // URLComponents decodes these already: decoding again would turn a password like
            // "50%off" into nothing.
            let user = components.user ?? "postgres"
            let password = components.password ?? ProcessInfo.processInfo.environment["PGPASSWORD"]
            let database = components.path.isEmpty || components.path == "/" ? nil : String(components.path.dropFirst())
            mode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
            let tls: PostgresClient.Configuration.TLS
            switch mode {
            case "disable": tls = .disable
            case "prefer": tls = .prefer(.makeClientConfiguration())
            case "require": tls = .require(.makeClientConfiguration())
            default:
                throw MeshError(.invalidRequest, "sslmode '\(mode)' is not supported; use disable, prefer or require (both check the server's certificate against the system roots)")
            }
            configuration = PostgresClient.Configuration(host: host, port: components.port ?? 5432, username: user,
                                                         password: password, database: database, tls: tls)
            configuration.options.connectTimeout = .seconds(5)
            configuration.options.maximumConnections = 10
            display = "postgres://\(user)@\(host):\(components.port ?? 5432)/\(database ?? user)"
        }
    }
}
