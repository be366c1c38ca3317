import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore
import X509

/// The proxy API (`--listen`): join, renew, register, heartbeat, deregister and the registry
/// watch stream. Every call but join requires the caller's SVID on the mTLS connection, and a
/// caller may only act for the service its SVID names.
struct ProxyAPIRoutes: Sendable {
    let authority: TrustAuthority
    let trustDomain: String
    let tokens: JoinTokens
    let registry: Registry
    let denials: DenialLog
    let traffic: TrafficStore
    let taps: TapHub
    let svidLifetime: TimeInterval
    let watchKeepalive: Duration
    let logger: Logger

    func handle(_ request: APIRequest) async -> APIResponse {
        do {
            switch (request.method, request.path) {
            case (.POST, ControlAPI.joinPath): return try await join(request)
            case (.POST, ControlAPI.renewPath): return try await renew(request)
            case (.POST, ControlAPI.registerPath): return try await register(request)
            case (.POST, ControlAPI.heartbeatPath): return try await heartbeat(request)
            case (.POST, ControlAPI.deregisterPath): return try await deregister(request)
            case (.GET, ControlAPI.watchPath): return try await watch(request)
            case (.POST, ControlAPI.decisionsPath): return try await reportDenials(request)
            case (.POST, ControlAPI.trafficPath): return try await reportTraffic(request)
            case (.POST, ControlAPI.tapPath): return try await reportTap(request)
            default:
                throw MeshError(.notFound, "no such endpoint: \(request.method) \(request.path)")
            }
        } catch {
            if let meshError = error as? MeshError {
                logger.notice("proxy API refused a call", metadata: [
                    "path": "\(request.path)", "code": "\(meshError.code)", "reason": "\(meshError.message)",
                    "peer": "\(request.peer?.description ?? request.remoteAddress ?? "?")"])
            }
            return .error(error)
        }
    }

    private func join(_ request: APIRequest) async throws -> APIResponse {
        let body = try request.decode(ControlAPI.JoinRequest.self)
        // Check the CSR before spending the token, so a malformed CSR does not burn it.
        _ = try CertificateAuthority.validate(csrPEM: body.csrPEM)
        let service = try await tokens.redeem(body.token)
        let id = try SPIFFEID(trustDomain: trustDomain, service: service)
        logger.info("proxy joined", metadata: ["spiffe_id": "\(id)", "from": "\(request.remoteAddress ?? "?")"])
        return try await issue(csrPEM: body.csrPEM, for: id)
    }

    private func renew(_ request: APIRequest) async throws -> APIResponse {
        let (id, _) = try caller(request)
        let body = try request.decode(ControlAPI.RenewRequest.self)
        return try await issue(csrPEM: body.csrPEM, for: id)
    }

    /// Signs with the current signer and sends every root (during a rotation, both).
    private func issue(csrPEM: String, for id: SPIFFEID) async throws -> APIResponse {
        let leaf = try await authority.sign(csrPEM: csrPEM, as: id, lifetime: svidLifetime)
        let bundle = await authority.bundle
        return .json(ControlAPI.CertificateResponse(
            certificateChainPEM: try PEM.text(of: [leaf]), trustBundlePEM: try bundle.pem,
            spiffeID: id.description, notAfter: leaf.notValidAfter))
    }

    private func register(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let body = try request.decode(ControlAPI.RegisterRequest.self)
        guard !body.instanceID.isEmpty, body.instanceID.utf8.count <= 64 else {
            throw MeshError(.invalidRequest, "instanceID must be 1 to 64 characters")
        }
        guard (1...65535).contains(body.inboundPort) else {
            throw MeshError(.invalidRequest, "inboundPort must be 1 to 65535")
        }
        guard body.labels.values.count <= 32,
              body.labels.values.allSatisfy({ $0.key.utf8.count <= 63 && $0.value.utf8.count <= 63 }) else {
            throw MeshError(.invalidRequest, "at most 32 labels of at most 63 characters each")
        }
        let existing = await registry.current.endpoints(of: service)
        if existing.count >= 1000 && !existing.contains(where: { $0.id == body.instanceID }) {
            throw MeshError(.forbidden, "service \(service) already has 1000 instances registered")
        }
        if let mode = body.mtls, !["strict", "permissive"].contains(mode) {
            throw MeshError(.invalidRequest, "mtls must be strict or permissive")
        }
        if let appProtocol = body.appProtocol, !["http", "tcp"].contains(appProtocol) {
            throw MeshError(.invalidRequest, "appProtocol must be http or tcp")
        }
        let address = body.address.isEmpty || body.address == "0.0.0.0" || body.address == "::"
            ? (request.remoteAddress ?? "127.0.0.1") : body.address
        let instance = ServiceInstance(id: body.instanceID, service: service, address: address,
                                       inboundPort: body.inboundPort, labels: body.labels,
                                       lastHeartbeat: Date(), certificateExpiry: body.certificateExpiry, mtls: body.mtls,
                                       appProtocol: body.appProtocol, appHealthy: body.appHealthy)
        try await registry.register(instance)
        return .json(instance)
    }

    private func heartbeat(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let body = try request.decode(ControlAPI.HeartbeatRequest.self)
        try await registry.heartbeat(id: body.instanceID, service: service, certificateExpiry: body.certificateExpiry,
                                     appHealthy: body.appHealthy, trustRoots: body.trustRoots, certificateRoot: body.certificateRoot)
        return .json(["ok": true])
    }

    private func deregister(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let body = try request.decode(ControlAPI.HeartbeatRequest.self)
        try await registry.deregister(id: body.instanceID, service: service)
        return .json(["ok": true])
    }

    /// Denials a proxy refused; a proxy may only report about its own service.
    private func reportDenials(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let batch = try request.decode([DenialRecord].self)
        guard batch.count <= 1000 else { throw MeshError(.invalidRequest, "report at most 1000 denials at once") }
        guard batch.allSatisfy({ $0.destination == service }) else {
            throw MeshError(.forbidden, "a proxy of \(service) may only report denials of requests to \(service)")
        }
        await denials.add(batch)
        return .json(["ok": true])
    }

    /// Traffic counters of one instance; a proxy may only report its own instance and edges
    /// that start or end at its own service.
    private func reportTraffic(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let report = try request.decode(TrafficReport.self)
        guard report.edges.count <= 2000, report.paths.count <= 1000 else {
            throw MeshError(.invalidRequest, "report at most 2000 edges and 1000 paths at once")
        }
        guard report.edges.allSatisfy(\.isPlausible), report.paths.allSatisfy(\.isPlausible) else {
            throw MeshError(.invalidRequest, "the traffic report is inconsistent (counts, sizes or names out of bounds)")
        }
        guard await registry.current.instances[report.instanceID]?.service == service else {
            throw MeshError(.forbidden, "instance \(report.instanceID) is not a registered instance of \(service)")
        }
        guard report.edges.allSatisfy({ edge in
            (edge.direction == "inbound" && edge.destination == service.rawValue)
                || (edge.direction == "outbound" && edge.source == service.rawValue)
        }) else {
            throw MeshError(.forbidden, "a proxy of \(service) may only report edges from or to \(service)")
        }
        await traffic.add(report)
        return .json(["ok": true])
    }

    /// Requests a tapped proxy sampled; only its own service's, only while a tap is open.
    private func reportTap(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        let batch = try request.decode(TapBatch.self)
        guard batch.events.count <= 1000, batch.skipped <= 1 << 32, batch.dropped <= 1 << 32 else {
            throw MeshError(.invalidRequest, "send at most 1000 tapped requests at once, with counts below 2^32")
        }
        guard batch.events.allSatisfy({ event in
            (event.direction == "inbound" && event.destination == service.rawValue)
                || (event.direction == "outbound" && event.source == service.rawValue)
        }) else {
            throw MeshError(.forbidden, "a proxy of \(service) may only send requests from or to \(service)")
        }
        guard await registry.current.instances[batch.instanceID]?.service == service else {
            throw MeshError(.forbidden, "instance \(batch.instanceID) is not a registered instance of \(service)")
        }
        // A proxy still sampling on its lease after the tap ended: nothing to do.
        guard await taps.isTapped(service) else { return .json(["ok": true]) }
        // An event out of bounds is dropped and counted, not the whole batch with it.
        var checked = batch
        checked.events = batch.events.filter(\.isPlausible)
        checked.dropped += UInt64(batch.events.count - checked.events.count)
        await taps.publish(checked, from: service)
        return .json(["ok": true])
    }

    /// A chunked stream of JSON lines, one ``RegistryEvent`` each (and the taps of the
    /// caller's service, see ``TapHub``), with an empty line as a keepalive so that dead
    /// connections are noticed on both sides.
    private func watch(_ request: APIRequest) async throws -> APIResponse {
        let (_, service) = try caller(request)
        // A replica cut off from the store no longer sees other replicas' changes: it sends
        // proxies to another (503), rather than keep them on a view that silently ages.
        if let problem = await registry.storeFailingLongerThan(Self.staleStoreLimit) {
            throw MeshError(.storeFailure, "this replica cannot read the store (\(problem)); use another replica")
        }
        let since = request.query["since"].flatMap { UInt64($0) }
        let events = await registry.watch(since: since)
        let keepalive = watchKeepalive
        let (stream, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingOldest(4096))
        let pump = Task {
            let encoder = JSONCoding.encoder
            for await event in events {
                guard var data = try? encoder.encode(event) else { continue }
                data.append(UInt8(ascii: "\n"))
                if case .dropped = continuation.yield(ByteBuffer(bytes: data)) { break }
            }
            continuation.finish()
        }
        let orders = await taps.orders(for: service)
        let tapPump = Task {
            let encoder = JSONCoding.encoder
            for await current in orders {
                guard var data = try? encoder.encode(RegistryEvent(version: 0, kind: .tap(current))) else { continue }
                data.append(UInt8(ascii: "\n"))
                if case .dropped = continuation.yield(ByteBuffer(bytes: data)) { break }
            }
        }
        let registry = self.registry
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: keepalive)
                // The store failing for long: end the stream so the proxy moves to a replica
                // that has it (and, if none has, reports itself stale).
                if await registry.storeFailingLongerThan(Self.staleStoreLimit) != nil {
                    continuation.finish()
                    return
                }
                continuation.yield(ByteBuffer(string: "\n"))
            }
        }
        continuation.onTermination = { _ in
            pump.cancel()
            tapPump.cancel()
            ticker.cancel()
        }
        return APIResponse(status: .ok, headers: ["content-type": "application/x-ndjson"], body: .stream(stream))
    }

    /// How long a replica may fail to read the store before it sends proxies elsewhere.
    static let staleStoreLimit: TimeInterval = 10

    /// The caller's workload identity, required on every call but join.
    private func caller(_ request: APIRequest) throws -> (SPIFFEID, ServiceName) {
        guard let peer = request.peer else {
            throw MeshError(.unauthenticated, "this call needs the proxy's SVID as a TLS client certificate")
        }
        guard let service = peer.service else {
            throw MeshError(.forbidden, "\(peer) is not a workload identity")
        }
        return (peer, service)
    }
}
