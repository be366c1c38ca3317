import ArgumentParser
import Foundation
import MeshCore
import MeshPolicy
import MeshTransport
import NIOPosix
import Yams

/// `mesh apply -f FILE|DIR|-`: validates every resource, then applies them all or none.
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Create or update resources (AuthorizationPolicy, ServiceDefaults, TrafficPolicy) from YAML or JSON.")

    @Option(name: .shortAndLong, help: "A file, a directory of .yaml/.yml/.json files, or - for standard input.")
    var filename: String

    @OptionGroup var adminOptions: AdminOptions

    func run() async throws {
        let documents = try ResourceFiles.load(filename)
        guard !documents.isEmpty else { throw ValidationError("\(filename): no resources found") }
        let client = try adminOptions.client()
        let results = try await client.send(.POST, AdminAPI.resourcesPath, json: documents.map(\.resource))
            .decode([AdminAPI.ApplyResult].self)
        for result in results {
            say("\(result.kind.lowercased())/\(result.name) \(result.outcome)\(result.version.map { " (version \($0))" } ?? "")")
        }
    }
}

/// `mesh get policies|servicedefaults|trafficpolicies [NAME] [-o yaml|json]`.
struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Show resources.")

    @Argument(help: "Resource kind: policies (authorizationpolicies, ap), servicedefaults (sd) or trafficpolicies (tp).")
    var kind: String

    @Argument(help: "A resource name (all when omitted).")
    var name: String?

    @Option(name: .shortAndLong, help: "Output format: table, yaml or json.")
    var output = "table"

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ResourceKinds.kind(of: kind) != nil else { throw ValidationError("unknown kind '\(kind)'; \(ResourceKinds.known)") }
        guard ["table", "yaml", "json"].contains(output) else { throw ValidationError("-o must be table, yaml or json") }
    }

    func run() async throws {
        let set = try await adminOptions.client().get(AdminAPI.policiesPath).decode(PolicySet.self)
        let kindName = ResourceKinds.kind(of: kind) ?? PolicyDocument.kindName
        let resources = set.resources.filter { $0.kind == kindName && (name == nil || $0.name == name) }
        if let name, resources.isEmpty { throw ValidationError("no \(kindName) named '\(name)'") }
        switch output {
        case "json":
            let data = try JSONCoding.encoder.encode(resources)
            say(String(decoding: data, as: UTF8.self))
        case "yaml":
            say(try resources.map { try YAMLEncoder().encode($0) }.joined(separator: "---\n"))
        default:
            say(Table.render(table(resources)))
            if kindName == PolicyDocument.kindName { say("default for requests no policy allows: \(set.defaultMode)") }
        }
    }

    private func table(_ resources: [MeshResource]) -> [[String]] {
        var policyRows = [["NAME", "SELECTOR", "ACTION", "MODE", "RULES", "EXPIRES"]]
        var defaultsRows = [["SERVICE", "MTLS", "LABELS"]]
        var trafficRows = [["SERVICE", "BALANCER", "EJECT AFTER", "BASE EJECTION", "MAX EJECTED"]]
        for resource in resources {
            switch resource {
            case .authorizationPolicy(let document):
                let selector = document.spec.selector.map { $0.service.map { "service=\($0)" } ?? $0.labels ?? "*" } ?? "*"
                policyRows.append([document.metadata.name, selector, document.spec.action ?? "allow", document.spec.mode ?? "enforce",
                                   "\(document.spec.rules.count)", document.spec.expires.map { "\($0)" } ?? "-"])
            case .serviceDefaults(let defaults):
                let labels = (defaults.spec.labels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                defaultsRows.append([defaults.metadata.name, defaults.spec.mtls ?? "(proxy flag)",
                                     labels.isEmpty ? "-" : labels.joined(separator: ",")])
            case .trafficPolicy(let policy):
                let effective = policy.effective
                trafficRows.append([policy.metadata.name, effective.balancer.rawValue,
                                    effective.consecutiveFailures == 0 ? "off" : "\(effective.consecutiveFailures) failures",
                                    "\(effective.baseEjectionSeconds)s", "\(effective.maxEjectedPercent)%"])
            }
        }
        switch ResourceKinds.kind(of: kind) {
        case ServiceDefaults.kindName: return defaultsRows
        case TrafficPolicy.kindName: return trafficRows
        default: return policyRows
        }
    }
}

/// `mesh delete policy|servicedefaults|trafficpolicy NAME`.
struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a resource.")

    @Argument(help: "Resource kind: policy (authorizationpolicy, ap), servicedefaults (sd) or trafficpolicy (tp).")
    var kind: String

    @Argument(help: "Resource name.")
    var name: String

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        guard ResourceKinds.kind(of: kind) != nil else { throw ValidationError("unknown kind '\(kind)'; \(ResourceKinds.known)") }
    }

    func run() async throws {
        let kindName = ResourceKinds.kind(of: kind) ?? PolicyDocument.kindName
        let response = try await adminOptions.client().send(.DELETE, AdminAPI.resourcesPath + "/\(kindName)/" + name,
                                                            json: Optional<String>.none)
        _ = try response.decode(AuditEntryView.self)
        say("\(kindName.lowercased())/\(name) deleted")
    }
}

/// `mesh history`: who changed what, when.
struct HistoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Show the audit log of resource changes.")

    @Option(help: "How many entries, newest first.")
    var limit = 50

    @OptionGroup var adminOptions: AdminOptions

    func run() async throws {
        let entries = try await adminOptions.client().get(AdminAPI.historyPath + "?limit=\(limit)").decode([AuditEntryView].self)
        var rows = [["TIME", "ACTOR", "ACTION", "RESOURCE", "VERSION"]]
        for entry in entries {
            rows.append(["\(entry.at)", entry.actor, entry.action, "\(entry.kind.lowercased())/\(entry.name)", "\(entry.version)"])
        }
        say(Table.render(rows))
    }
}

/// `mesh explain --from web --to api --method GET --path /orders`: the decision and why.
struct ExplainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain", abstract: "Say whether a call would be allowed, which policy decides, and why.")

    @Option(help: "Caller: a service name, a SPIFFE ID, or 'unauthenticated'.")
    var from: String?

    @Option(help: "Destination service.")
    var to: String?

    @Option(help: "Explain a past denial by the x-mesh-request-id its 403 carried.")
    var requestId: String?

    @Option(name: [.customLong("from-ip"), .customLong("source-address")], help: "Caller address (for CIDR rules).")
    var sourceAddress: String?

    @Option(help: "Hypothetical caller labels, KEY=VALUE,… (instead of the registry's).")
    var fromLabels: String?

    @Option(help: "Destination port.")
    var port: Int?

    @Option(help: "HTTP method (omit for a connection-level check).")
    var method: String?

    @Option(help: "Request path.")
    var path: String?

    @Option(name: .customLong("header"), help: "Request header NAME=VALUE (repeatable).")
    var headers: [String] = []

    @OptionGroup var adminOptions: AdminOptions

    func validate() throws {
        if requestId == nil && (from == nil || to == nil) {
            throw ValidationError("give --from and --to (a hypothetical call), or --request-id (a past denial)")
        }
    }

    func run() async throws {
        if let requestId {
            let record = try await adminOptions.client().get(ControlAPI.decisionsPath + "/" + requestId).decode(DenialRecord.self)
            say("request \(record.requestID) at \(record.at): \(record.caller)\(record.callerAddress.map { " (\($0))" } ?? "") -> \(record.destination) \(record.method) \(record.path)")
            say("DENIED (\(record.code))\(record.policy.map { " by policy \($0)" } ?? "")")
            for line in record.explanation { say("  \(line)") }
            return
        }
        guard let from, let to else { return }
        let destination: ServiceName
        do { destination = try ServiceName(to) } catch let error as MeshError { throw ValidationError("--to: \(error.message)") }
        var headerMap: [String: String] = [:]
        for header in headers {
            guard let eq = header.firstIndex(of: "=") else { throw ValidationError("--header '\(header)' must be NAME=VALUE") }
            headerMap[String(header[..<eq])] = String(header[header.index(after: eq)...])
        }
        var normalizedPath = path
        if let path {
            switch PathNormalizer.normalize(path) {
            case .failure(let why): throw ValidationError("--path: \(why) (the proxy answers 400)")
            case .success(let normal): normalizedPath = normal.path
            }
        }
        let answer = try await adminOptions.client().send(.POST, AdminAPI.explainPath, json: AdminAPI.ExplainRequest(
            from: from, sourceAddress: sourceAddress, to: destination, port: port, method: method, path: normalizedPath,
            headers: headerMap.isEmpty ? nil : headerMap, fromLabels: try parsedLabels())).decode(AdminAPI.ExplainResponse.self)
        let labels = (answer.callerLabels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        say("caller: \(answer.callerIdentity ?? "?")  labels: \(labels.isEmpty ? "-" : labels)")
        if let mtls = answer.destinationMTLS { say("destination: \(destination)  mTLS: \(mtls.mode) (\(mtls.source))") }
        say("\(answer.allowed ? "ALLOWED" : "DENIED") (\(answer.code))\(answer.policy.map { " by policy \($0)" } ?? "")")
        for line in answer.explanation { say("  \(line)") }
        if !answer.wouldDeny.isEmpty { say("  audit: would be denied by \(answer.wouldDeny.joined(separator: ", "))") }
        if let suggestion = answer.suggestion { say("to change it: \(suggestion)") }
    }

    private func parsedLabels() throws -> [String: String]? {
        guard let fromLabels else { return nil }
        do { return try Labels(parsing: fromLabels.split(separator: ",").map(String.init)).values } catch let error as MeshError {
            throw ValidationError("--from-labels: \(error.message)")
        }
    }
}

/// A decoded audit entry as the CLI shows it.
struct AuditEntryView: Decodable {
    var at: Date
    var actor: String
    var action: String
    var kind: String
    var name: String
    var version: Int
}

/// The kind names the CLI accepts, singular, plural and short.
enum ResourceKinds {
    static let known = "known: policies (authorizationpolicies, ap), servicedefaults (sd), trafficpolicies (tp)"

    static func kind(of name: String) -> String? {
        switch name.lowercased() {
        case "policy", "policies", "authorizationpolicy", "authorizationpolicies", "ap": PolicyDocument.kindName
        case "servicedefaults", "servicedefault", "service-defaults", "sd": ServiceDefaults.kindName
        case "trafficpolicy", "trafficpolicies", "traffic-policy", "tp": TrafficPolicy.kindName
        default: nil
        }
    }
}

/// Reads resource files: YAML (several documents separated by `---`) or JSON (one object or
/// an array). Every error names the file, the line when it can, and the field.
enum ResourceFiles {
    struct Loaded {
        var resource: MeshResource
        var file: String
        /// The document's own text and the line it starts on, for error positions.
        var text: String = ""
        var firstLine = 1
    }

    static func load(_ path: String) throws -> [Loaded] {
        if path == "-" {
            let data = FileHandle.standardInput.readDataToEndOfFile()
            return try parse(String(decoding: data, as: UTF8.self), file: "<stdin>")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ValidationError("-f \(path): no such file or directory")
        }
        if isDirectory.boolValue {
            let names = try FileManager.default.contentsOfDirectory(atPath: path).sorted()
                .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") || $0.hasSuffix(".json") }
            return try names.flatMap { try load((path as NSString).appendingPathComponent($0)) }
        }
        return try parse(readFile(path, flag: "-f"), file: path)
    }

    static func parse(_ text: String, file: String) throws -> [Loaded] {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        var loaded: [Loaded] = []
        if trimmed.hasPrefix("{") || trimmed.hasPrefix("[") {
            let data = Data(trimmed.utf8)
            do {
                if trimmed.hasPrefix("[") {
                    loaded = try JSONCoding.decoder.decode([MeshResource].self, from: data).map { Loaded(resource: $0, file: file) }
                } else {
                    loaded = [Loaded(resource: try JSONCoding.decoder.decode(MeshResource.self, from: data), file: file)]
                }
            } catch {
                throw ValidationError("\(file): \(describe(error, text: text))")
            }
        } else {
            var lineOffset = 0
            for chunk in splitDocuments(text) {
                defer { lineOffset += chunk.components(separatedBy: "\n").count }
                guard !chunk.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                      !chunk.split(separator: "\n").allSatisfy({ $0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }) else { continue }
                do {
                    let decoder = YAMLDecoder()
                    loaded.append(Loaded(resource: try decoder.decode(MeshResource.self, from: chunk), file: file,
                                         text: chunk, firstLine: lineOffset + 1))
                } catch {
                    throw ValidationError("\(file): \(describe(error, text: chunk, lineOffset: lineOffset))")
                }
            }
        }
        // Semantic validation, whole set before anything is sent.
        for item in loaded {
            do { try ResourceValidator.validate(item.resource) } catch let error as MeshError {
                let line = lineOf(field: error.message, in: item.text.isEmpty ? text : item.text)
                    .map { ":\($0 + item.firstLine - 1)" } ?? ""
                throw ValidationError("\(file)\(line): \(error.message)")
            }
        }
        return loaded
    }

    private static func splitDocuments(_ text: String) -> [String] {
        var documents: [String] = []
        var current: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.trimmingCharacters(in: .whitespaces) == "---" {
                documents.append(current.joined(separator: "\n"))
                current = [""]
            } else {
                current.append(line)
            }
        }
        documents.append(current.joined(separator: "\n"))
        return documents
    }

    private static func describe(_ error: Error, text: String, lineOffset: Int = 0) -> String {
        func at(_ path: [CodingKey]) -> String {
            let field = path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                .replacingOccurrences(of: ".[", with: "[")
            let line = path.last.flatMap { key in lineOf(key: key.stringValue, in: text) }.map { "line \($0 + lineOffset), " } ?? ""
            return "\(line)field '\(field)'"
        }
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "\(at(context.codingPath + [key])) is missing"
        case DecodingError.typeMismatch(let type, let context):
            return "\(at(context.codingPath)) should be \(type)"
        case DecodingError.valueNotFound(let type, let context):
            return "\(at(context.codingPath)) should be \(type), found nothing"
        case DecodingError.dataCorrupted(let context):
            return "\(at(context.codingPath)): \(context.debugDescription)"
        case let error as YamlError:
            return "not valid YAML: \(error)"
        default:
            return "\(error)"
        }
    }

    /// The 1-based line of the first `key:` in the text.
    static func lineOf(key: String, in text: String) -> Int? {
        for (index, line) in text.components(separatedBy: "\n").enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "- "))
            if trimmed.hasPrefix("\(key):") || trimmed.hasPrefix("\"\(key)\":") { return index + 1 }
        }
        return nil
    }

    /// For a compiler message naming `field 'spec.rules[0].to[0].paths'`, the line of `paths:`.
    private static func lineOf(field message: String, in text: String) -> Int? {
        guard let start = message.range(of: "field '")?.upperBound,
              let end = message[start...].firstIndex(of: "'") else { return nil }
        let field = message[start..<end]
        guard let last = field.split(separator: ".").last?.split(separator: "[").first else { return nil }
        return lineOf(key: String(last), in: text)
    }
}

/// Aligned plain-text tables for the CLI.
enum Table {
    static func render(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        let widths = (0..<first.count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
