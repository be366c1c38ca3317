import ArgumentParser
import Foundation
import MeshCore
import MeshPolicy
import MeshProxy
import Yams

/// The file of `mesh proxy --config FILE.yaml` (standalone mode, no control plane):
///
/// ```yaml
/// service: web
/// app: 127.0.0.1:8080
/// inbound: 0.0.0.0:15006
/// outbound: 127.0.0.1:15001
/// admin: 127.0.0.1:15000
/// threads: 1                       # optional
/// labels: {version: v1}            # optional
/// tls:
///   certificate: /etc/mesh/web.pem # SVID chain, leaf first
///   key: /etc/mesh/web-key.pem
///   bundle: /etc/mesh/ca.pem
///   trustDomain: mesh.local        # optional when the CA names it in a spiffe:// URI SAN
/// services:                        # endpoints (peers' inbound listeners) by service name
///   api: [10.0.0.5:15006, 10.0.0.6:15006]
/// trafficPolicies: [...]             # optional TrafficPolicy resources
/// appProtocol: http                  # optional: tcp for an opaque app
/// peerProtocol: http1                # optional: h2 multiplexes HTTP/1.1 requests on HTTP/2 between proxies
/// upstreams: {db: 15432}             # optional: local ports bound to one service each
/// ```
/// Relative paths are resolved against the file's directory.
enum StaticConfigFile {
    struct File: Decodable {
        struct TLS: Decodable {
            var certificate: String
            var key: String
            var bundle: String
            var trustDomain: String?
        }
        var service: String
        var app: String
        var inbound: String
        var outbound: String
        var admin: String
        var threads: Int?
        var labels: [String: String]?
        var tls: TLS
        var services: [String: [String]]?
        /// AuthorizationPolicy documents for this proxy's inbound side.
        var policies: [PolicyDocument]?
        /// TrafficPolicy resources: of the services this proxy calls (balancing, retries,
        /// timeouts, splits …) and of its own service (rate limits).
        var trafficPolicies: [TrafficPolicy]?
        /// http (default) or tcp: what the app speaks.
        var appProtocol: String?
        /// Local ports bound to one service each, `SERVICE: [HOST:]PORT`.
        var upstreams: [String: String]?
        /// http1 (default) or h2: how HTTP/1.1 requests travel to peer proxies.
        var peerProtocol: String?
        /// deny (default) or audit.
        var defaultPolicy: String?
        /// strict (default) or permissive.
        var mtls: String?
        /// stdout or a file: one JSON line per request.
        var accessLog: String?
        /// OTLP/HTTP traces URL and sampling ratio.
        var tracing: Tracing?
        /// false turns request metrics off (for measuring their cost).
        var metrics: Bool?
        struct Tracing: Decodable {
            var endpoint: String
            var sampling: Double?
        }
    }

    static func load(path: String) throws -> Sidecar.Configuration {
        let text = try readFile(path, flag: "--config")
        let file: File
        do {
            file = try YAMLDecoder().decode(File.self, from: text)
        } catch let DecodingError.keyNotFound(key, context) {
            throw ValidationError("\(path): missing field '\((context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))'")
        } catch let DecodingError.typeMismatch(_, context) {
            throw ValidationError("\(path): field '\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type")
        } catch let error as YamlError {
            throw ValidationError("\(path): not valid YAML: \(error)")
        } catch {
            throw ValidationError("\(path): \(error)")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent()
        func resolve(_ file: String) -> String {
            file.hasPrefix("/") ? file : base.appendingPathComponent(file).path
        }
        func address(_ text: String, _ field: String) throws -> HostPort {
            do { return try HostPort(parsing: text) } catch let error as MeshError {
                throw ValidationError("\(path): field '\(field)': \(error.message)")
            }
        }
        func name(_ text: String, _ field: String) throws -> ServiceName {
            do { return try ServiceName(text) } catch let error as MeshError {
                throw ValidationError("\(path): field '\(field)': \(error.message)")
            }
        }
        var services: [ServiceName: [HostPort]] = [:]
        for (service, endpoints) in file.services ?? [:] {
            services[try name(service, "services.\(service)")] = try endpoints.map { try address($0, "services.\(service)") }
        }
        let settings = Sidecar.StaticSettings(certificateFile: resolve(file.tls.certificate), keyFile: resolve(file.tls.key),
                                              bundleFile: resolve(file.tls.bundle), trustDomain: file.tls.trustDomain,
                                              services: services)
        var policySettings = settings
        policySettings.policies = PolicySet(defaultMode: file.defaultPolicy ?? "deny", policies: file.policies ?? [],
                                            traffic: file.trafficPolicies ?? [])
        do {
            _ = try PolicyCompiler.compile(policySettings.policies)
            for traffic in file.trafficPolicies ?? [] { try ResourceValidator.validate(traffic) }
        } catch let error as MeshError {
            throw ValidationError("\(path): \(error.message)")
        }
        var config = Sidecar.Configuration(
            service: try name(file.service, "service"), app: try address(file.app, "app"),
            inbound: try address(file.inbound, "inbound"), outbound: try address(file.outbound, "outbound"),
            admin: try address(file.admin, "admin"), source: .staticFiles(policySettings))
        config.accessLog = file.accessLog
        if let appProtocol = file.appProtocol {
            guard ["http", "tcp"].contains(appProtocol) else { throw ValidationError("\(path): field 'appProtocol' must be http or tcp") }
            config.appProtocol = appProtocol
        }
        for (service, listen) in (file.upstreams ?? [:]).sorted(by: { $0.key < $1.key }) {
            do {
                config.upstreams.append(try ProxyCommand.parseUpstream("\(service)=\(listen)"))
            } catch {
                throw ValidationError("\(path): field 'upstreams.\(service)': write [HOST:]PORT, e.g. 127.0.0.1:15432")
            }
        }
        if let peerProtocol = file.peerProtocol {
            guard ["h2", "http1"].contains(peerProtocol) else { throw ValidationError("\(path): field 'peerProtocol' must be h2 or http1") }
            config.limits.http1OverHTTP2 = peerProtocol == "h2"
        }
        config.metricsEnabled = file.metrics ?? true
        config.traceEndpoint = file.tracing?.endpoint
        if let sampling = file.tracing?.sampling {
            guard (0...1).contains(sampling) else { throw ValidationError("\(path): field 'tracing.sampling' must be between 0 and 1") }
            config.traceSampling = sampling
        }
        if let mtls = file.mtls {
            guard ["strict", "permissive"].contains(mtls) else { throw ValidationError("\(path): field 'mtls' must be strict or permissive") }
            config.mtlsMode = mtls
        }
        if let threads = file.threads {
            guard (1...64).contains(threads) else { throw ValidationError("\(path): field 'threads' must be 1 to 64") }
            config.threads = threads
        }
        do {
            config.labels = try Labels(parsing: (file.labels ?? [:]).map { "\($0.key)=\($0.value)" })
        } catch let error as MeshError {
            throw ValidationError("\(path): field 'labels': \(error.message)")
        }
        return config
    }
}
