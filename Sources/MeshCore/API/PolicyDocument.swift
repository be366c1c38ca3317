import struct Foundation.Date

/// An `AuthorizationPolicy` resource as written by operators (YAML or JSON) and as sent to
/// proxies: `kind / metadata / spec`. `MeshPolicy` compiles it into the evaluator's model and
/// names the field when something is wrong.
public struct PolicyDocument: Codable, Sendable, Equatable {
    public struct Metadata: Codable, Sendable, Equatable {
        public var name: String
        public init(name: String) { self.name = name }
    }

    public struct Spec: Codable, Sendable, Equatable {
        /// Destination workloads: a service name or a label expression; both absent means all.
        public struct Selector: Codable, Sendable, Equatable {
            public var service: String?
            public var labels: String?
            public init(service: String? = nil, labels: String? = nil) {
                self.service = service
                self.labels = labels
            }
        }
        public struct Rule: Codable, Sendable, Equatable {
            public var from: [Source]?
            public var to: [Operation]?
            public init(from: [Source]? = nil, to: [Operation]? = nil) {
                self.from = from
                self.to = to
            }
        }
        public struct Source: Codable, Sendable, Equatable {
            public var identities: [String]?
            public var services: [String]?
            public var labels: String?
            public var unauthenticated: Bool?
            public var ipBlocks: [String]?
            public init(identities: [String]? = nil, services: [String]? = nil, labels: String? = nil,
                        unauthenticated: Bool? = nil, ipBlocks: [String]? = nil) {
                self.identities = identities
                self.services = services
                self.labels = labels
                self.unauthenticated = unauthenticated
                self.ipBlocks = ipBlocks
            }
        }
        public struct Operation: Codable, Sendable, Equatable {
            public struct Header: Codable, Sendable, Equatable {
                public var name: String
                public var value: String?
                public init(name: String, value: String? = nil) {
                    self.name = name
                    self.value = value
                }
            }
            public var ports: [Int]?
            public var methods: [String]?
            public var paths: [String]?
            public var headers: [Header]?
            public init(ports: [Int]? = nil, methods: [String]? = nil, paths: [String]? = nil, headers: [Header]? = nil) {
                self.ports = ports
                self.methods = methods
                self.paths = paths
                self.headers = headers
            }
        }

        public var selector: Selector?
        public var action: String?
        public var mode: String?
        public var expires: Date?
        public var rules: [Rule]
        public init(selector: Selector? = nil, action: String? = nil, mode: String? = nil, expires: Date? = nil, rules: [Rule]) {
            self.selector = selector
            self.action = action
            self.mode = mode
            self.expires = expires
            self.rules = rules
        }
    }

    public static let kindName = "AuthorizationPolicy"

    public var kind: String
    public var metadata: Metadata
    public var spec: Spec

    public init(name: String, spec: Spec) {
        self.kind = Self.kindName
        self.metadata = Metadata(name: name)
        self.spec = spec
    }
}

/// Everything a proxy needs to authorize: the policies, the per-service defaults (mTLS mode,
/// central labels) and the mesh's default for requests no policy allows.
public struct PolicySet: Codable, Sendable, Equatable {
    /// `deny` (the default) or `audit` (let through and record, for migrations).
    public var defaultMode: String
    public var policies: [PolicyDocument]
    /// `ServiceDefaults` resources, sorted by service.
    public var services: [ServiceDefaults]
    /// `TrafficPolicy` resources, sorted by service.
    public var traffic: [TrafficPolicy]

    public init(defaultMode: String = "deny", policies: [PolicyDocument] = [], services: [ServiceDefaults] = [],
                traffic: [TrafficPolicy] = []) {
        self.defaultMode = defaultMode
        self.policies = policies
        self.services = services
        self.traffic = traffic
    }

    /// The set holding exactly `resources`, each kind in its list, sorted by name.
    public init(defaultMode: String, resources: [MeshResource]) {
        var policies: [PolicyDocument] = []
        var services: [ServiceDefaults] = []
        var traffic: [TrafficPolicy] = []
        for resource in resources {
            switch resource {
            case .authorizationPolicy(let document): policies.append(document)
            case .serviceDefaults(let defaults): services.append(defaults)
            case .trafficPolicy(let policy): traffic.append(policy)
            }
        }
        self.init(defaultMode: defaultMode, policies: policies.sorted { $0.metadata.name < $1.metadata.name },
                  services: services.sorted { $0.metadata.name < $1.metadata.name },
                  traffic: traffic.sorted { $0.metadata.name < $1.metadata.name })
    }

    /// Every resource in the set.
    public var resources: [MeshResource] {
        policies.map(MeshResource.authorizationPolicy) + services.map(MeshResource.serviceDefaults)
            + traffic.map(MeshResource.trafficPolicy)
    }

    /// How callers reach `service`: its `TrafficPolicy` with defaults filled in.
    public func traffic(for service: ServiceName) -> TrafficPolicy.Effective {
        traffic.first { $0.metadata.name == service.rawValue }?.effective ?? TrafficPolicy.Effective()
    }

    /// The central settings of `service`, if any.
    public func defaults(for service: ServiceName) -> ServiceDefaults.Spec? {
        services.first { $0.metadata.name == service.rawValue }?.spec
    }

    /// An instance's labels as policies see them: its own, overridden key by key by the
    /// central labels of its service.
    public func effectiveLabels(of service: ServiceName, own: [String: String]) -> [String: String] {
        guard let central = defaults(for: service)?.labels, !central.isEmpty else { return own }
        return own.merging(central) { _, central in central }
    }

    private enum Key: String, CodingKey { case defaultMode, policies, services, traffic }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        defaultMode = try container.decode(String.self, forKey: .defaultMode)
        policies = try container.decodeIfPresent([PolicyDocument].self, forKey: .policies) ?? []
        // Absent from a control plane older than ServiceDefaults.
        services = try container.decodeIfPresent([ServiceDefaults].self, forKey: .services) ?? []
        traffic = try container.decodeIfPresent([TrafficPolicy].self, forKey: .traffic) ?? []
    }
}
