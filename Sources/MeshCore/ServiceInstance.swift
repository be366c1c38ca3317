import struct Foundation.Date

/// One running instance of a service as the registry knows it: where its sidecar's inbound
/// listener is, its labels, and when it was last heard from.
public struct ServiceInstance: Hashable, Sendable, Codable {
    /// Stable id chosen by the proxy at start (random), so re-registration is idempotent.
    public var id: String
    public var service: ServiceName
    /// Address other proxies dial: the sidecar's inbound listener, never the app.
    public var address: String
    public var inboundPort: Int
    public var labels: Labels
    public var lastHeartbeat: Date
    /// `notAfter` of the instance's current SVID, as reported by its proxy.
    public var certificateExpiry: Date?
    /// The inbound mTLS mode of the instance's proxy flag (`strict`/`permissive`); a
    /// ServiceDefaults resource overrides it. Nil from proxies that do not report it.
    public var mtls: String?
    /// What the app behind the instance speaks: `http` (HTTP, the default when nil) or `tcp`
    /// (opaque: relayed byte for byte, never sniffed — for server-first protocols and
    /// databases such as PostgreSQL). Callers' proxies skip protocol detection for `tcp`.
    public var appProtocol: String?
    /// The app's health as the instance's own proxy last checked it (`--health-check`); nil
    /// when not checked. No proxy sends traffic to an instance whose app is unhealthy.
    public var appHealthy: Bool?
    /// Fingerprints of the roots the instance's proxy trusts, and of the root its SVID chains
    /// to (SHA-256 of the certificate, 32 hex digits), as it last reported them: how a CA
    /// rotation knows when every proxy is ready for its next step. Nil from older proxies.
    public var trustRoots: [String]?
    public var certificateRoot: String?

    public init(id: String, service: ServiceName, address: String, inboundPort: Int, labels: Labels,
                lastHeartbeat: Date, certificateExpiry: Date?, mtls: String? = nil, appProtocol: String? = nil,
                appHealthy: Bool? = nil) {
        self.mtls = mtls
        self.appProtocol = appProtocol
        self.appHealthy = appHealthy
        self.id = id
        self.service = service
        self.address = address
        self.inboundPort = inboundPort
        self.labels = labels
        self.lastHeartbeat = lastHeartbeat
        self.certificateExpiry = certificateExpiry
    }

    public var endpoint: HostPort { HostPort(host: address, port: inboundPort) }
    /// Whether the instance takes traffic: not when its proxy reports its app unhealthy.
    public var servesTraffic: Bool { appHealthy != false }
    /// Whether the app is declared opaque TCP (`appProtocol: tcp`).
    public var isOpaque: Bool { appProtocol == "tcp" }
}

/// An immutable view of the whole registry at one version. Proxies hold one and swap it whole
/// when an update arrives; they never mutate it in place.
public struct RegistrySnapshot: Sendable, Equatable, Codable {
    public var version: UInt64
    public var instances: [String: ServiceInstance]
    /// Every service the control plane knows, including those with no instance right now, so
    /// that a proxy can tell "no endpoints" from "no such service".
    public var services: Set<ServiceName>
    /// The authorization policies in force, distributed with the registry.
    public var policies: PolicySet
    /// The trust roots to hold (nil: keep the bundle the proxy has).
    public var trust: TrustUpdate?

    public init(version: UInt64 = 0, instances: [String: ServiceInstance] = [:], services: Set<ServiceName> = [],
                policies: PolicySet = PolicySet(), trust: TrustUpdate? = nil) {
        self.trust = trust
        self.version = version
        self.instances = instances
        self.services = services.union(instances.values.map(\.service))
        self.policies = policies
    }

    /// Instances of one service, ordered by id so that every proxy sees the same order.
    public func endpoints(of service: ServiceName) -> [ServiceInstance] {
        instances.values.filter { $0.service == service }.sorted { $0.id < $1.id }
    }

    /// Applies one event; events at or below the current version are ignored, which makes
    /// replays after a reconnect harmless.
    public mutating func apply(_ event: RegistryEvent) {
        switch event.kind {
        case .snapshot(let all, let known, let policySet, let trustUpdate):
            instances = Dictionary(all.map { ($0.id, $0) }, uniquingKeysWith: { _, new in new })
            services = Set(known).union(all.map(\.service))
            policies = policySet
            if let trustUpdate { trust = trustUpdate }
            version = event.version
        case .trust(let update):
            guard event.version > version else { return }
            trust = update
            version = event.version
        case .policies(let policySet):
            guard event.version > version else { return }
            policies = policySet
            version = event.version
        case .upsert(let instance):
            guard event.version > version else { return }
            instances[instance.id] = instance
            services.insert(instance.service)
            version = event.version
        case .remove(let id):
            guard event.version > version else { return }
            instances[id] = nil
            version = event.version
        case .tap:
            // Not part of the registry.
            return
        }
    }
}

/// One message on the registry watch stream, one JSON object per line:
/// `{"version":7,"type":"snapshot","instances":[…],"services":["api"]}`,
/// `{"version":8,"type":"upsert","instance":{…}}`, `{"version":9,"type":"remove","id":"…"}`.
public struct RegistryEvent: Sendable, Equatable, Codable {
    public enum Kind: Sendable, Equatable {
        /// Replaces everything the proxy had: sent first when the proxy's version is unknown
        /// or too old for the change log.
        case snapshot([ServiceInstance], services: [ServiceName], policies: PolicySet, trust: TrustUpdate? = nil)
        /// The whole policy set after an apply or delete (policies are small; whole is simple).
        case policies(PolicySet)
        case upsert(ServiceInstance)
        case remove(id: String)
        /// New trust roots (a step of a CA rotation).
        case trust(TrustUpdate)
        /// The taps (`mesh tap`) of the watching proxy's service, all of them: not a registry
        /// change (version 0, never replayed), sent on the same stream so that a tap reaches
        /// proxies as fast as a policy does.
        case tap([TapOrder])
    }

    public var version: UInt64
    public var kind: Kind

    public init(version: UInt64, kind: Kind) {
        self.version = version
        self.kind = kind
    }

    private enum Key: String, CodingKey { case version, type, instances, services, instance, id, policies, taps, trust }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        version = try container.decode(UInt64.self, forKey: .version)
        switch try container.decode(String.self, forKey: .type) {
        case "snapshot":
            kind = .snapshot(try container.decode([ServiceInstance].self, forKey: .instances),
                             services: try container.decodeIfPresent([ServiceName].self, forKey: .services) ?? [],
                             policies: try container.decodeIfPresent(PolicySet.self, forKey: .policies) ?? PolicySet(),
                             trust: try container.decodeIfPresent(TrustUpdate.self, forKey: .trust))
        case "policies":
            kind = .policies(try container.decode(PolicySet.self, forKey: .policies))
        case "upsert":
            kind = .upsert(try container.decode(ServiceInstance.self, forKey: .instance))
        case "remove":
            kind = .remove(id: try container.decode(String.self, forKey: .id))
        case "trust":
            kind = .trust(try container.decode(TrustUpdate.self, forKey: .trust))
        case "tap":
            kind = .tap(try container.decode([TapOrder].self, forKey: .taps))
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .type, in: container,
                                                   debugDescription: "unknown registry event type '\(other)'")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(version, forKey: .version)
        switch kind {
        case .snapshot(let instances, let services, let policies, let trust):
            try container.encode("snapshot", forKey: .type)
            try container.encode(instances, forKey: .instances)
            try container.encode(services, forKey: .services)
            try container.encode(policies, forKey: .policies)
            try container.encodeIfPresent(trust, forKey: .trust)
        case .trust(let update):
            try container.encode("trust", forKey: .type)
            try container.encode(update, forKey: .trust)
        case .policies(let policies):
            try container.encode("policies", forKey: .type)
            try container.encode(policies, forKey: .policies)
        case .upsert(let instance):
            try container.encode("upsert", forKey: .type)
            try container.encode(instance, forKey: .instance)
        case .remove(let id):
            try container.encode("remove", forKey: .type)
            try container.encode(id, forKey: .id)
        case .tap(let orders):
            try container.encode("tap", forKey: .type)
            try container.encode(orders, forKey: .taps)
        }
    }
}
