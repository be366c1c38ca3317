/// A `ServiceDefaults` resource: settings for every instance of one service, set centrally
/// with `mesh apply` (Consul's `service-defaults`, Istio's `PeerAuthentication` + labels).
///
/// ```yaml
/// kind: ServiceDefaults
/// metadata: {name: api}          # the service
/// spec:
///   mtls: permissive             # strict | permissive; absent: each proxy's --mtls flag
///   labels: {team: payments}     # added to every instance; override the proxies' own
/// ```
///
/// Central values win over the proxies' flags: the platform team decides, and a workload
/// cannot claim labels that a policy trusts when the team has set them here.
public struct ServiceDefaults: Codable, Sendable, Equatable {
    public struct Metadata: Codable, Sendable, Equatable {
        public var name: String
        public init(name: String) { self.name = name }
    }

    public struct Spec: Codable, Sendable, Equatable {
        /// `strict` or `permissive`; nil leaves the decision to each proxy's `--mtls` flag.
        public var mtls: String?
        public var labels: [String: String]?
        public init(mtls: String? = nil, labels: [String: String]? = nil) {
            self.mtls = mtls
            self.labels = labels
        }
    }

    public static let kindName = "ServiceDefaults"

    public var kind: String
    public var metadata: Metadata
    public var spec: Spec

    public init(service: String, spec: Spec) {
        self.kind = Self.kindName
        self.metadata = Metadata(name: service)
        self.spec = spec
    }
}

/// Any resource `mesh apply` accepts, told apart by its `kind` field. Encodes as the
/// resource itself (no wrapper), so files, the API and the store all hold the same JSON.
public enum MeshResource: Codable, Sendable, Equatable {
    case authorizationPolicy(PolicyDocument)
    case serviceDefaults(ServiceDefaults)
    case trafficPolicy(TrafficPolicy)

    /// Every kind, as written in `kind:`.
    public static let kinds = [PolicyDocument.kindName, ServiceDefaults.kindName, TrafficPolicy.kindName]

    public var kind: String {
        switch self {
        case .authorizationPolicy: PolicyDocument.kindName
        case .serviceDefaults: ServiceDefaults.kindName
        case .trafficPolicy: TrafficPolicy.kindName
        }
    }

    public var name: String {
        switch self {
        case .authorizationPolicy(let document): document.metadata.name
        case .serviceDefaults(let defaults): defaults.metadata.name
        case .trafficPolicy(let policy): policy.metadata.name
        }
    }

    private enum Key: String, CodingKey { case kind }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        let kind = try container.decode(String.self, forKey: .kind)
        switch kind {
        case PolicyDocument.kindName: self = .authorizationPolicy(try PolicyDocument(from: decoder))
        case ServiceDefaults.kindName: self = .serviceDefaults(try ServiceDefaults(from: decoder))
        case TrafficPolicy.kindName: self = .trafficPolicy(try TrafficPolicy(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .kind, in: container,
                debugDescription: "unknown kind '\(kind)'; known: \(Self.kinds.joined(separator: ", "))")
        }
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case .authorizationPolicy(let document): try document.encode(to: encoder)
        case .serviceDefaults(let defaults): try defaults.encode(to: encoder)
        case .trafficPolicy(let policy): try policy.encode(to: encoder)
        }
    }
}
