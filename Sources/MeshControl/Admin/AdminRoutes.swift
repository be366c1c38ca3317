import Crypto
import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore

/// The operator API (`--admin`): JSON over HTTP, every call authenticated with the admin
/// token as a bearer token.
struct AdminRoutes: Sendable {
    let adminToken: String
    let tokens: JoinTokens
    let registry: Registry
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
            default:
                throw MeshError(.notFound, "no such endpoint: \(request.method) \(request.path)")
            }
        } catch {
            return .error(error)
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
