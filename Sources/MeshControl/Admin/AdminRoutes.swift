import Crypto
import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshPolicy
import MeshTransport
import NIOCore

/// The operator API (`--admin`): JSON over HTTP, every call authenticated with the admin
/// token as a bearer token.
struct AdminRoutes: Sendable {
    let adminToken: String
    let tokens: JoinTokens
    let registry: Registry
    let denials: DenialLog
    let trustDomain: String
    let logger: Logger

    func handle(_ request: APIRequest) async -> APIResponse {
        guard authorized(request) else {
            logger.notice("admin API call without a valid token", metadata: ["from": "\(request.remoteAddress ?? "?")"])
            return .error(MeshError(.unauthenticated, "send the admin token (DATA_DIR/admin.token) as 'Authorization: Bearer TOKEN'"))
        }
        do {
            switch (request.method, request.path) {
            case (.POST, AdminAPI.tokensPath):
                let body = try request.decode(AdminAPI.CreateTokenRequest.self)
                let (token, expiresAt) = try await tokens.create(service: body.service, ttl: body.ttlSeconds)
                logger.info("join token created", metadata: ["service": "\(body.service)", "expires": "\(expiresAt)"])
                return .json(AdminAPI.CreateTokenResponse(token: token, service: body.service, expiresAt: expiresAt))
            case (.GET, AdminAPI.servicesPath):
                return .json(try await services())
            case (.GET, "/v1/health"):
                return .json(["status": "ok"])
            case (.GET, AdminAPI.policiesPath):
                return .json(await registry.current.policies)
            case (.POST, AdminAPI.policiesPath):
                return try await apply(request)
            case (.DELETE, let path) where path.hasPrefix(AdminAPI.policiesPath + "/"):
                let name = String(path.dropFirst(AdminAPI.policiesPath.count + 1))
                guard let entry = try await registry.deletePolicy(name: name, actor: actor(request)) else {
                    throw MeshError(.notFound, "no AuthorizationPolicy named '\(name)'")
                }
                return .json(entry)
            case (.GET, AdminAPI.historyPath):
                let limit = request.query["limit"].flatMap(Int.init) ?? 50
                return .json(try await registry.history(limit: limit))
            case (.GET, let path) where path.hasPrefix(ControlAPI.decisionsPath + "/"):
                let id = String(path.dropFirst(ControlAPI.decisionsPath.count + 1))
                guard let record = await denials.find(id) else {
                    throw MeshError(.notFound, "no denial with request id '\(id)' is known (the control plane keeps the last 10,000; static-mode proxies only log them)")
                }
                return .json(record)
            case (.POST, AdminAPI.explainPath):
                return .json(try await explain(request.decode(AdminAPI.ExplainRequest.self)))
            default:
                throw MeshError(.notFound, "no such endpoint: \(request.method) \(request.path)")
            }
        } catch {
            return .error(error)
        }
    }

    private func actor(_ request: APIRequest) -> String {
        "admin@\(request.remoteAddress ?? "?")"
    }

    /// Validates every document first: one invalid resource refuses the whole apply.
    private func apply(_ request: APIRequest) async throws -> APIResponse {
        let documents = try request.decode([PolicyDocument].self)
        var names = Set<String>()
        for document in documents {
            _ = try PolicyCompiler.compile(document)
            guard names.insert(document.metadata.name).inserted else {
                throw MeshError(.invalidRequest, "AuthorizationPolicy '\(document.metadata.name)' appears twice in one apply")
            }
        }
        let entries = try await registry.applyPolicies(documents, actor: actor(request))
        let changed = Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { _, new in new })
        return .json(documents.map { document in
            let entry = changed[document.metadata.name]
            return AdminAPI.ApplyResult(name: document.metadata.name, outcome: entry?.action.rawValue ?? "unchanged",
                                        version: entry?.version)
        })
    }

    /// Evaluates a hypothetical call against the current policies and registry labels.
    private func explain(_ question: AdminAPI.ExplainRequest) async throws -> AdminAPI.ExplainResponse {
        let snapshot = await registry.current
        let evaluator = try PolicyCompiler.compile(snapshot.policies)
        var identity: String?
        var callerService: ServiceName?
        if question.from == "unauthenticated" {
            identity = nil
        } else if question.from.hasPrefix("spiffe://") {
            let id = try SPIFFEID(parsing: question.from)
            identity = id.description
            callerService = id.service
        } else {
            let service = try ServiceName(question.from)
            identity = try SPIFFEID(trustDomain: trustDomain, service: service).description
            callerService = service
        }
        func labels(of service: ServiceName?) -> [String: String] {
            guard let service else { return [:] }
            return snapshot.endpoints(of: service).first?.labels.values ?? [:]
        }
        let callerLabels = question.fromLabels ?? labels(of: callerService)
        let decision = evaluator.evaluate(RequestAttributes(
            destination: question.to, destinationLabels: labels(of: question.to), callerIdentity: identity,
            callerService: callerService, callerLabels: callerLabels, callerAddress: question.sourceAddress,
            port: question.port ?? 0, method: question.method?.uppercased(), path: question.path,
            headers: (question.headers ?? [:]).reduce(into: [:]) { $0[$1.key.lowercased(), default: []].append($1.value) }))
        return AdminAPI.ExplainResponse(allowed: decision.allowed, code: decision.code.rawValue, policy: decision.policy,
                                        wouldDeny: decision.wouldDeny, explanation: decision.explanation,
                                        callerIdentity: identity ?? "unauthenticated", callerLabels: callerLabels,
                                        suggestion: suggestion(for: decision, question: question, callerService: callerService))
    }

    /// The smallest change that flips the decision: narrow the deny that matched, or add the
    /// one allow rule that covers exactly this call.
    private func suggestion(for decision: Decision, question: AdminAPI.ExplainRequest, callerService: ServiceName?) -> String? {
        switch decision.code {
        case .deniedByPolicy:
            return "remove or narrow the deny policy '\(decision.policy ?? "?")' (mesh get policies \(decision.policy ?? "") -o yaml)"
        case .deniedNoMatchingAllow:
            var from = callerService.map { "services: [\($0)]" } ?? (question.from == "unauthenticated"
                ? "unauthenticated: true" + (question.sourceAddress.map { ", ipBlocks: [\($0)/32]" } ?? "")
                : "identities: [\"\(question.from)\"]")
            if from.isEmpty { from = "services: [\(question.from)]" }
            var to: [String] = []
            if let method = question.method { to.append("methods: [\(method.uppercased())]") }
            if let path = question.path { to.append("paths: [\"\(path)\"]") }
            let rule = to.isEmpty ? "{from: [{\(from)}]}" : "{from: [{\(from)}], to: [{\(to.joined(separator: ", "))}]}"
            return "allow it with: kind: AuthorizationPolicy, metadata: {name: allow-\(callerService?.rawValue ?? "caller")-to-\(question.to)}, spec: {selector: {service: \(question.to)}, rules: [\(rule)]}"
        case .allowedByPolicy:
            return "to deny it, remove or narrow the allow policy '\(decision.policy ?? "?")', or add a deny rule (deny wins)"
        case .allowedAuditDefault:
            return "the mesh default is audit; with --default-policy deny this call needs an allow rule"
        }
    }

    private func services() async throws -> [AdminAPI.ServiceListing] {
        let snapshot = await registry.current
        var byService: [ServiceName: [AdminAPI.ServiceListing.Instance]] = [:]
        for instance in snapshot.instances.values.sorted(by: { $0.id < $1.id }) {
            let healthy = await registry.isHealthy(instance)
            byService[instance.service, default: []].append(.init(
                id: instance.id, endpoint: instance.endpoint.description, labels: instance.labels, healthy: healthy,
                lastHeartbeat: instance.lastHeartbeat, certificateExpiry: instance.certificateExpiry))
        }
        return try byService.keys.sorted().map { service in
            AdminAPI.ServiceListing(service: service,
                                    spiffeID: try SPIFFEID(trustDomain: trustDomain, service: service).description,
                                    instances: byService[service] ?? [])
        }
    }

    /// Constant-time comparison so that the token cannot be guessed byte by byte.
    private func authorized(_ request: APIRequest) -> Bool {
        guard let header = request.headers.first(name: "authorization"), header.hasPrefix("Bearer ") else { return false }
        let presented = Array(header.dropFirst("Bearer ".count).utf8)
        let expected = Array(adminToken.utf8)
        guard presented.count == expected.count else { return false }
        var diff: UInt8 = 0
        for (a, b) in zip(presented, expected) { diff |= a ^ b }
        return diff == 0
    }
}
