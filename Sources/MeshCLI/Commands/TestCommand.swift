import ArgumentParser
import Foundation
import MeshCore
import MeshPolicy
import MeshTransport

/// `mesh test FILE`: policy assertions, so teams keep their policies under test in CI.
///
/// One assertion per line, `#` for comments:
/// ```
/// web -> api GET /v1/users: allow
/// batch -> api DELETE /v1/users/1: deny
/// unauthenticated@10.1.2.3 -> api GET /health: allow
/// web -> api: allow                 # connection level (no HTTP attributes)
/// ```
/// Evaluated with the proxies' own evaluator against the control plane's current policies
/// and labels, or against local files with `--policies` (no control plane needed).
struct TestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test", abstract: "Check policy assertions such as 'web -> api GET /v1/users: allow'.")

    @Argument(help: "File of assertions.")
    var file: String

    @Option(help: "Evaluate against these policy files (a file, directory or -) instead of the control plane.")
    var policies: String?

    @Option(help: "With --policies: what requests no policy allows get (deny or audit).")
    var defaultPolicy = "deny"

    @Option(help: "Trust domain of the callers' SPIFFE IDs.")
    var trustDomain = "mesh.local"

    @OptionGroup var adminOptions: AdminOptions

    func run() async throws {
        let assertions = try PolicyAssertion.parse(readFile(file, flag: "FILE"), file: file)
        let set: PolicySet
        var labels: [ServiceName: [String: String]] = [:]
        // Services known to refuse plaintext callers in the TLS handshake, before any policy.
        var mtlsOnly: Set<ServiceName> = []
        if let policies {
            set = PolicySet(defaultMode: defaultPolicy, resources: try ResourceFiles.load(policies).map(\.resource))
            for defaults in set.services {
                guard let service = try? ServiceName(defaults.metadata.name) else { continue }
                labels[service] = defaults.spec.labels ?? [:]
                if defaults.spec.mtls == "strict" { mtlsOnly.insert(service) }
            }
        } else {
            let client = try adminOptions.client()
            set = try await client.get(AdminAPI.policiesPath).decode(PolicySet.self)
            for service in try await client.get(AdminAPI.servicesPath).decode([AdminAPI.ServiceListing].self) {
                labels[service.service] = service.instances.first?.labels.values ?? [:]
                if let mtls = service.mtls, mtls.mode != "permissive" { mtlsOnly.insert(service.service) }
            }
        }
        let evaluator: PolicyEvaluator
        do { evaluator = try PolicyCompiler.compile(set) } catch let error as MeshError { throw ValidationError(error.message) }
        var passed = 0, failed = 0
        for assertion in assertions {
            let attributes = try assertion.attributes(trustDomain: trustDomain, labels: labels)
            let decision = evaluator.evaluate(attributes)
            let refused = attributes.callerIdentity == nil && mtlsOnly.contains(assertion.destination)
            let got = decision.allowed && !refused ? "allow" : "deny"
            if got == assertion.expected {
                passed += 1
                say("PASS  \(assertion.text)")
            } else if refused {
                failed += 1
                say("FAIL  \(assertion.text)  (line \(assertion.line)): got deny, plaintext-refused")
                say("        \(assertion.destination) accepts mTLS only; a ServiceDefaults with spec.mtls: permissive admits plaintext callers")
            } else {
                failed += 1
                say("FAIL  \(assertion.text)  (line \(assertion.line)): got \(got), \(decision.code.rawValue)\(decision.policy.map { " by \($0)" } ?? "")")
                for line in decision.explanation { say("        \(line)") }
            }
        }
        say("\(passed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}

/// One line of a policy test file.
struct PolicyAssertion {
    var text: String
    var line: Int
    var caller: String
    var callerAddress: String?
    var destination: ServiceName
    var method: String?
    var path: String?
    var expected: String

    static func parse(_ content: String, file: String) throws -> [PolicyAssertion] {
        var result: [PolicyAssertion] = []
        for (index, raw) in content.components(separatedBy: "\n").enumerated() {
            let text = String(raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
                .trimmingCharacters(in: .whitespaces)
            guard !text.isEmpty else { continue }
            func fail(_ why: String) -> ValidationError {
                ValidationError("\(file):\(index + 1): \(why): '\(text)'; write e.g. 'web -> api GET /v1/users: allow'")
            }
            guard let colon = text.lastIndex(of: ":") else { throw fail("missing ': allow' or ': deny'") }
            let expected = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
            guard expected == "allow" || expected == "deny" else { throw fail("the outcome must be allow or deny") }
            let call = text[..<colon]
            guard let arrow = call.range(of: "->") else { throw fail("missing '->'") }
            var caller = call[..<arrow.lowerBound].trimmingCharacters(in: .whitespaces)
            var address: String?
            if let at = caller.firstIndex(of: "@") {
                address = String(caller[caller.index(after: at)...])
                caller = String(caller[..<at])
            }
            let rest = call[arrow.upperBound...].split(separator: " ").map(String.init)
            guard let destinationName = rest.first, let destination = try? ServiceName(destinationName) else {
                throw fail("the destination must be a service name")
            }
            var method: String?
            var path: String?
            if rest.count >= 3 {
                method = rest[1].uppercased()
                switch PathNormalizer.normalize(rest[2]) {
                case .success(let normal): path = normal.path
                case .failure(let why): throw fail("the path is refused by the proxy (\(why))")
                }
            } else if rest.count == 2 {
                throw fail("give both a method and a path, or neither")
            }
            result.append(PolicyAssertion(text: text, line: index + 1, caller: caller, callerAddress: address, destination: destination,
                                          method: method, path: path, expected: expected))
        }
        return result
    }

    func attributes(trustDomain: String, labels: [ServiceName: [String: String]]) throws -> RequestAttributes {
        var identity: String?
        var service: ServiceName?
        if caller == "unauthenticated" {
            identity = nil
        } else if caller.hasPrefix("spiffe://") {
            identity = caller
            service = (try? SPIFFEIDText.service(of: caller))
        } else {
            guard let name = try? ServiceName(caller) else {
                throw ValidationError("line \(line): caller '\(caller)' is not a service, a spiffe:// ID or 'unauthenticated'")
            }
            service = name
            identity = "spiffe://\(trustDomain)/ns/default/sa/\(name)"
        }
        return RequestAttributes(destination: destination, destinationLabels: labels[destination] ?? [:], callerIdentity: identity,
                                 callerService: service, callerLabels: service.flatMap { labels[$0] } ?? [:],
                                 callerAddress: callerAddress, port: 0, method: method, path: path)
    }
}

/// The service of a workload SPIFFE ID (`…/ns/default/sa/NAME`).
enum SPIFFEIDText {
    static func service(of id: String) throws -> ServiceName? {
        let parts = id.split(separator: "/")
        guard parts.count >= 5, parts[parts.count - 2] == "sa" else { return nil }
        return try ServiceName(String(parts[parts.count - 1]))
    }
}
