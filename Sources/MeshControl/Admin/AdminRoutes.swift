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
    let traffic: TrafficStore
    let taps: TapHub
    let trustDomain: String
    let authority: TrustAuthority
    let check: MeshCheck
    let logger: Logger

    func handle(_ request: APIRequest) async -> APIResponse {
        // The dashboard's page, style sheet and script hold no data: they load without the
        // token, and every call they make presents it like any other client.
        if request.method == .GET, let asset = DashboardAssets.response(for: request.path) {
            return asset
        }
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
                if let problem = await registry.storeError {
                    throw MeshError(.storeFailure, "the store does not answer (\(problem)); proxies keep their last configuration, changes are refused until it is back")
                }
                return .json(["status": "ok", "version": "\(await registry.current.version)"])
            case (.GET, AdminAPI.checkPath):
                return .json(await check.run())
            case (.GET, AdminAPI.caPath):
                return .json(try await caStatus())
            case (.POST, AdminAPI.caRotatePath):
                try await authority.startRotation()
                try await registry.announceTrust(try await authority.update)
                logger.notice("CA rotation started", metadata: ["by": "\(actor(request))"])
                return .json(try await caStatus())
            case (.GET, AdminAPI.policiesPath):
                return .json(await registry.current.policies)
            case (.POST, AdminAPI.resourcesPath):
                return try await apply(request)
            case (.DELETE, let path) where path.hasPrefix(AdminAPI.resourcesPath + "/"):
                let parts = path.dropFirst(AdminAPI.resourcesPath.count + 1).split(separator: "/", omittingEmptySubsequences: false)
                guard parts.count == 2, MeshResource.kinds.contains(String(parts[0])), !parts[1].isEmpty else {
                    throw MeshError(.invalidRequest, "delete \(AdminAPI.resourcesPath)/KIND/NAME, KIND one of \(MeshResource.kinds.joined(separator: ", "))")
                }
                let (kind, name) = (String(parts[0]), String(parts[1]))
                guard let entry = try await registry.delete(kind: kind, name: name, actor: actor(request)) else {
                    throw MeshError(.notFound, "no \(kind) named '\(name)'")
                }
                return .json(entry)
            case (.GET, AdminAPI.historyPath):
                let limit = request.query["limit"].flatMap(Int.init) ?? 50
                return .json(try await registry.history(limit: limit))
            case (.GET, AdminAPI.denialsPath):
                let limit = min(max(request.query["limit"].flatMap(Int.init) ?? 50, 1), 1000)
                let destination = try request.query["service"].map { try ServiceName($0) }
                return .json(await denials.recent(limit: limit, destination: destination))
            case (.GET, let path) where path.hasPrefix(ControlAPI.decisionsPath + "/"):
                let id = String(path.dropFirst(ControlAPI.decisionsPath.count + 1))
                guard let record = await denials.find(id) else {
                    throw MeshError(.notFound, "no denial with request id '\(id)' is known (the control plane keeps the last 10,000; static-mode proxies only log them)")
                }
                return .json(record)
            case (.GET, AdminAPI.statPath):
                return .json(try await stat(window: window(request), service: request.query["service"]))
            case (.GET, AdminAPI.edgesPath):
                return .json(try await edges(window: window(request)))
            case (.GET, AdminAPI.topPath):
                return .json(try await top(service: request.query["service"] ?? "", window: window(request)))
            case (.GET, AdminAPI.tapPath):
                return try await tap(request)
            case (.GET, AdminAPI.seriesPath):
                return .json(try await series(service: request.query["service"] ?? "", window: window(request, default: 900, limit: 3600)))
            case (.POST, AdminAPI.explainPath):
                return .json(try await explain(request.decode(AdminAPI.ExplainRequest.self)))
            default:
                throw MeshError(.notFound, "no such endpoint: \(request.method) \(request.path)")
            }
        } catch {
            return .error(error)
        }
    }

    /// `mesh tap`: a stream of the requests the service's proxies sample, until the client
    /// goes or `limit` requests have been sent.
    private func tap(_ request: APIRequest) async throws -> APIResponse {
        let query = request.query
        guard let name = try? ServiceName(query["service"] ?? ""), await registry.current.services.contains(name) else {
            throw MeshError(.notFound, "no service named '\(query["service"] ?? "")' is known; give ?service=NAME (see mesh services)")
        }
        func peer(_ key: String) throws -> String? {
            guard let value = query[key], !value.isEmpty else { return nil }
            guard value == "unauthenticated" || (try? ServiceName(value)) != nil else {
                throw MeshError(.invalidRequest, "\(key) must be a service name or 'unauthenticated', not '\(value)'")
            }
            return value
        }
        let rate = try query["rate"].map { text -> Int in
            guard let rate = Int(text), (1...TapOrder.maxRate).contains(rate) else {
                throw MeshError(.invalidRequest, "rate must be 1 to \(TapOrder.maxRate) requests per second per proxy")
            }
            return rate
        } ?? 20
        let limit = try query["limit"].map { text -> Int in
            guard let limit = Int(text), limit > 0 else { throw MeshError(.invalidRequest, "limit must be a positive number of requests") }
            return limit
        }
        let method = query["method"].map { $0.uppercased() }
        if let method, method.isEmpty || method.count > 16 || !method.allSatisfy({ $0.isLetter }) {
            throw MeshError(.invalidRequest, "method must be an HTTP method such as GET")
        }
        let path = query["path"].flatMap { $0.isEmpty ? nil : $0 }
        if let path, !path.hasPrefix("/") || path.utf8.count > 512 {
            throw MeshError(.invalidRequest, "path must be a path prefix starting with '/' (at most 512 bytes)")
        }
        let order = TapOrder(id: UUID().uuidString.lowercased(), to: try peer("to"), from: try peer("from"), method: method,
                             pathPrefix: path, maxPerSecond: rate, ttlSeconds: TapHub.orderTTL)
        let stream = try await taps.open(service: name, order: order, limit: limit)
        logger.info("tap opened", metadata: ["service": "\(name)", "from": "\(request.remoteAddress ?? "?")", "rate": "\(rate)"])
        return APIResponse(status: .ok, headers: ["content-type": "application/x-ndjson", "cache-control": "no-store"], body: .stream(stream))
    }

    private func actor(_ request: APIRequest) -> String {
        "admin@\(request.remoteAddress ?? "?")"
    }

    /// Validates every resource first: one invalid resource refuses the whole apply.
    private func apply(_ request: APIRequest) async throws -> APIResponse {
        let resources = try request.decode([MeshResource].self)
        try ResourceValidator.validate(resources)
        let entries = try await registry.apply(resources, actor: actor(request))
        let changed = Dictionary(entries.map { ("\($0.kind)/\($0.name)", $0) }, uniquingKeysWith: { _, new in new })
        return .json(resources.map { resource in
            let entry = changed["\(resource.kind)/\(resource.name)"]
            return AdminAPI.ApplyResult(kind: resource.kind, name: resource.name, outcome: entry?.action.rawValue ?? "unchanged",
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
            return snapshot.policies.effectiveLabels(of: service, own: snapshot.endpoints(of: service).first?.labels.values ?? [:])
        }
        let callerLabels = question.fromLabels ?? labels(of: callerService)
        let decision = evaluator.evaluate(RequestAttributes(
            destination: question.to, destinationLabels: labels(of: question.to), callerIdentity: identity,
            callerService: callerService, callerLabels: callerLabels, callerAddress: question.sourceAddress,
            port: question.port ?? 0, method: question.method?.uppercased(), path: question.path,
            headers: (question.headers ?? [:]).reduce(into: [:]) { $0[$1.key.lowercased(), default: []].append($1.value) }))
        let mtls = snapshot.mtlsMode(of: question.to)
        if identity == nil && mtls.mode != "permissive" {
            // A plaintext caller never reaches the policies of a strict destination: its
            // connection fails in the TLS handshake (the proxy sends no HTTP answer at all).
            let policies = "with permissive mTLS the policies would \(decision.allowed ? "allow" : "deny") it (\(decision.code.rawValue))"
            return AdminAPI.ExplainResponse(
                allowed: false, code: "plaintext-refused", policy: nil, wouldDeny: [],
                explanation: ["\(question.to) accepts mTLS only (mode \(mtls.mode), set by \(mtls.source)): a plaintext caller is refused in the TLS handshake, before any policy",
                              policies] + decision.explanation.map { "  " + $0 },
                callerIdentity: "unauthenticated", callerLabels: callerLabels,
                suggestion: "to admit plaintext callers: mesh apply kind: ServiceDefaults, metadata: {name: \(question.to)}, spec: {mtls: permissive}; then allow them with a rule from: [{unauthenticated: true, ipBlocks: [...]}]",
                destinationMTLS: mtls)
        }
        return AdminAPI.ExplainResponse(allowed: decision.allowed, code: decision.code.rawValue, policy: decision.policy,
                                        wouldDeny: decision.wouldDeny, explanation: decision.explanation,
                                        callerIdentity: identity ?? "unauthenticated", callerLabels: callerLabels,
                                        suggestion: suggestion(for: decision, question: question, callerService: callerService),
                                        destinationMTLS: mtls)
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

    private func caStatus() async throws -> CAStatus {
        let state = await authority.state
        let bundle = await authority.bundle
        let signing = TrustBundle.fingerprint(of: await authority.signerCertificate)
        let instances = Array(await registry.current.instances.values)
        let byID = Dictionary(instances.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let pending = await authority.pending(instances).map {
            CAStatus.Pending(instance: $0.id, service: byID[$0.id]?.service.rawValue ?? "?", waiting: $0.waiting)
        }
        return CAStatus(phase: state.phase.rawValue, since: state.since,
                        roots: bundle.roots.map {
                            let fingerprint = TrustBundle.fingerprint(of: $0)
                            return CAStatus.Root(fingerprint: fingerprint, notBefore: $0.notValidBefore, notAfter: $0.notValidAfter,
                                                 signing: fingerprint == signing)
                        },
                        pending: pending, instances: instances.count)
    }

    private func services() async throws -> [AdminAPI.ServiceListing] {
        let snapshot = await registry.current
        var byService: [ServiceName: [AdminAPI.ServiceListing.Instance]] = [:]
        for instance in snapshot.instances.values.sorted(by: { $0.id < $1.id }) {
            let healthy = await registry.isHealthy(instance)
            let central = snapshot.policies.defaults(for: instance.service)?.mtls
            byService[instance.service, default: []].append(.init(
                id: instance.id, endpoint: instance.endpoint.description,
                labels: Labels(snapshot.policies.effectiveLabels(of: instance.service, own: instance.labels.values)), healthy: healthy,
                lastHeartbeat: instance.lastHeartbeat, certificateExpiry: instance.certificateExpiry,
                mtls: central ?? instance.mtls ?? "strict", appHealthy: instance.appHealthy, appProtocol: instance.appProtocol))
        }
        return try byService.keys.sorted().map { service in
            AdminAPI.ServiceListing(service: service,
                                    spiffeID: try SPIFFEID(trustDomain: trustDomain, service: service).description,
                                    mtls: snapshot.mtlsMode(of: service), instances: byService[service] ?? [])
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
