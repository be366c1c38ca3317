import struct Foundation.Date

/// Wire messages of the control plane's proxy API (`mesh control --listen`), JSON over
/// HTTP/1.1 on mTLS. Shared by `MeshControl` (server) and `MeshProxy` (client), which is why
/// they live in the bottom layer.
public enum ControlAPI {
    public static let joinPath = "/v1/join"
    public static let renewPath = "/v1/renew"
    public static let registerPath = "/v1/register"
    public static let heartbeatPath = "/v1/heartbeat"
    public static let deregisterPath = "/v1/deregister"
    /// `POST` a list of ``DenialRecord``s about the caller's own service.
    public static let decisionsPath = "/v1/decisions"
    /// `POST` a ``TrafficReport`` (proxies, every heartbeat interval).
    public static let trafficPath = "/v1/traffic"
    /// `GET /v1/watch?since=VERSION`: a chunked stream of ``RegistryEvent`` JSON lines.
    public static let watchPath = "/v1/watch"
    /// `POST` a ``TapBatch``: the requests a tapped proxy sampled (`mesh tap`).
    public static let tapPath = "/v1/tap"

    /// First certificate: a single-use join token plus a CSR (PEM).
    public struct JoinRequest: Codable, Sendable {
        public var token: String
        public var csrPEM: String
        public init(token: String, csrPEM: String) { self.token = token; self.csrPEM = csrPEM }
    }

    /// Renewal: a CSR, authenticated by the caller's current SVID on the mTLS connection.
    public struct RenewRequest: Codable, Sendable {
        public var csrPEM: String
        public init(csrPEM: String) { self.csrPEM = csrPEM }
    }

    /// The signed SVID (leaf first, PEM) and the trust bundle to verify peers with.
    public struct CertificateResponse: Codable, Sendable {
        public var certificateChainPEM: String
        public var trustBundlePEM: String
        public var spiffeID: String
        public var notAfter: Date
        public init(certificateChainPEM: String, trustBundlePEM: String, spiffeID: String, notAfter: Date) {
            self.certificateChainPEM = certificateChainPEM
            self.trustBundlePEM = trustBundlePEM
            self.spiffeID = spiffeID
            self.notAfter = notAfter
        }
    }

    public struct RegisterRequest: Codable, Sendable {
        public var instanceID: String
        /// Empty means "the address this connection came from".
        public var address: String
        public var inboundPort: Int
        public var labels: Labels
        public var certificateExpiry: Date?
        /// The proxy's own `--mtls` mode (a ServiceDefaults resource may override it).
        public var mtls: String?
        /// `http` or `tcp` (the proxy's `--app-protocol`); see ``ServiceInstance/appProtocol``.
        public var appProtocol: String?
        /// The app's health at registration; nil when the proxy does not check it.
        public var appHealthy: Bool?
        public init(instanceID: String, address: String, inboundPort: Int, labels: Labels, certificateExpiry: Date?,
                    mtls: String? = nil, appProtocol: String? = nil, appHealthy: Bool? = nil) {
            self.mtls = mtls
            self.appProtocol = appProtocol
            self.appHealthy = appHealthy
            self.instanceID = instanceID
            self.address = address
            self.inboundPort = inboundPort
            self.labels = labels
            self.certificateExpiry = certificateExpiry
        }
    }

    public struct HeartbeatRequest: Codable, Sendable {
        public var instanceID: String
        public var certificateExpiry: Date?
        /// The app's health now; nil when the proxy does not check it. A change is published
        /// to every proxy at once (the instance leaves or rejoins their endpoint sets).
        public var appHealthy: Bool?
        /// Fingerprints of the roots the proxy trusts and of the root its SVID chains to
        /// (see ``ServiceInstance/trustRoots``); a change is recorded at once.
        public var trustRoots: [String]?
        public var certificateRoot: String?
        public init(instanceID: String, certificateExpiry: Date?, appHealthy: Bool? = nil, trustRoots: [String]? = nil,
                    certificateRoot: String? = nil) {
            self.instanceID = instanceID
            self.certificateExpiry = certificateExpiry
            self.appHealthy = appHealthy
            self.trustRoots = trustRoots
            self.certificateRoot = certificateRoot
        }
    }

    /// Every error the APIs return has this body, with a matching HTTP status.
    public struct ErrorBody: Codable, Sendable {
        public var code: String
        public var message: String
        public init(code: String, message: String) { self.code = code; self.message = message }
    }
}

/// Wire messages of the operator API (`mesh control --admin`), JSON over HTTP with a bearer
/// admin token.
public enum AdminAPI {
    public static let tokensPath = "/v1/tokens"
    public static let servicesPath = "/v1/services"
    /// `GET`: the ``PolicySet`` in force (policies, service defaults, default mode).
    public static let policiesPath = "/v1/policies"
    /// `POST` a list of ``MeshResource``s to apply (all or none), `DELETE …/KIND/NAME`.
    public static let resourcesPath = "/v1/resources"
    /// `GET ?limit=N`: the audit log, newest first.
    public static let historyPath = "/v1/history"
    /// `GET ?window=SECONDS[&service=NAME]`: ``ServiceStat`` rows (`mesh stat`).
    public static let statPath = "/v1/stat"
    /// `GET ?window=SECONDS`: ``EdgeStat`` rows (`mesh edges`).
    public static let edgesPath = "/v1/edges"
    /// `GET ?service=NAME&window=SECONDS`: ``PathStat`` rows, busiest first (`mesh top`).
    public static let topPath = "/v1/top"
    /// `GET ?service=NAME&window=SECONDS`: ``SeriesPoint``s, oldest first (the dashboard's charts).
    public static let seriesPath = "/v1/stat/series"
    /// `GET ?service=NAME[&to=&from=&method=&path=&rate=N&limit=N]`: a stream of JSON lines,
    /// ``TapEvent``s and a ``TapStatus`` every 2 s (`mesh tap`).
    public static let tapPath = "/v1/tap"
    /// `GET ?limit=N[&service=NAME]`: the latest ``DenialRecord``s, newest first
    /// (`GET …/ID` answers one of them, for `mesh explain --request-id`).
    public static let denialsPath = ControlAPI.decisionsPath
    /// `POST` an ``ExplainRequest``: the decision the mesh would make, with reasons.
    public static let explainPath = "/v1/explain"

    /// The result of an apply: one line per resource.
    public struct ApplyResult: Codable, Sendable {
        public var kind: String
        public var name: String
        /// created, updated or unchanged.
        public var outcome: String
        public var version: Int?
        public init(kind: String, name: String, outcome: String, version: Int?) {
            self.kind = kind
            self.name = name
            self.outcome = outcome
            self.version = version
        }
    }

    /// "Would this call be allowed, and why?"
    public struct ExplainRequest: Codable, Sendable {
        /// A service name, a SPIFFE ID, or `unauthenticated`.
        public var from: String
        public var sourceAddress: String?
        public var to: ServiceName
        public var port: Int?
        public var method: String?
        public var path: String?
        public var headers: [String: String]?
        /// Hypothetical caller labels (instead of those in the registry).
        public var fromLabels: [String: String]?
        public init(from: String, sourceAddress: String? = nil, to: ServiceName, port: Int? = nil, method: String? = nil,
                    path: String? = nil, headers: [String: String]? = nil, fromLabels: [String: String]? = nil) {
            self.fromLabels = fromLabels
            self.from = from
            self.sourceAddress = sourceAddress
            self.to = to
            self.port = port
            self.method = method
            self.path = path
            self.headers = headers
        }
    }

    /// A service's inbound mTLS mode and where it comes from.
    public struct MTLSModeView: Codable, Sendable, Equatable {
        /// `strict`, `permissive`, or `mixed` when the instances' flags disagree.
        public var mode: String
        /// `ServiceDefaults/NAME`, `proxy flag`, or `default` (no instance, no resource).
        public var source: String
        public init(mode: String, source: String) {
            self.mode = mode
            self.source = source
        }
    }

    public struct ExplainResponse: Codable, Sendable {
        /// The destination's inbound mTLS mode: a plaintext caller meets it before any policy.
        public var destinationMTLS: MTLSModeView?
        public var allowed: Bool
        public var code: String
        public var policy: String?
        public var wouldDeny: [String]
        public var explanation: [String]
        /// The caller as evaluated.
        public var callerIdentity: String?
        public var callerLabels: [String: String]?
        /// The smallest change that would flip the decision, in words or as a resource.
        public var suggestion: String?
        public init(allowed: Bool, code: String, policy: String?, wouldDeny: [String], explanation: [String],
                    callerIdentity: String? = nil, callerLabels: [String: String]? = nil, suggestion: String? = nil,
                    destinationMTLS: MTLSModeView? = nil) {
            self.destinationMTLS = destinationMTLS
            self.callerIdentity = callerIdentity
            self.callerLabels = callerLabels
            self.suggestion = suggestion
            self.allowed = allowed
            self.code = code
            self.policy = policy
            self.wouldDeny = wouldDeny
            self.explanation = explanation
        }
    }

    public struct CreateTokenRequest: Codable, Sendable {
        public var service: ServiceName
        public var ttlSeconds: Double
        public init(service: ServiceName, ttlSeconds: Double) { self.service = service; self.ttlSeconds = ttlSeconds }
    }

    public struct CreateTokenResponse: Codable, Sendable {
        public var token: String
        public var service: ServiceName
        public var expiresAt: Date
        public init(token: String, service: ServiceName, expiresAt: Date) {
            self.token = token
            self.service = service
            self.expiresAt = expiresAt
        }
    }

    public struct ServiceListing: Codable, Sendable {
        public struct Instance: Codable, Sendable {
            public var id: String
            public var endpoint: String
            /// Effective labels: the instance's own, overridden by its ServiceDefaults.
            public var labels: Labels
            /// Heartbeating within the TTL (else `stale`); see `appHealthy` for the app itself.
            public var healthy: Bool
            public var lastHeartbeat: Date
            public var certificateExpiry: Date?
            /// The mode the instance's proxy enforces (central setting, else its flag).
            public var mtls: String?
            /// The proxy's active health check of its app: false takes the instance out of
            /// every endpoint set; nil when not checked.
            public var appHealthy: Bool?
            /// `http` or `tcp` (opaque); nil from proxies that do not say (http).
            public var appProtocol: String?
            public init(id: String, endpoint: String, labels: Labels, healthy: Bool, lastHeartbeat: Date, certificateExpiry: Date?,
                        mtls: String? = nil, appHealthy: Bool? = nil, appProtocol: String? = nil) {
                self.mtls = mtls
                self.appHealthy = appHealthy
                self.appProtocol = appProtocol
                self.id = id
                self.endpoint = endpoint
                self.labels = labels
                self.healthy = healthy
                self.lastHeartbeat = lastHeartbeat
                self.certificateExpiry = certificateExpiry
            }
        }
        public var service: ServiceName
        public var spiffeID: String
        /// The inbound mTLS mode as the mesh knows it (see ``MTLSModeView``).
        public var mtls: MTLSModeView?
        public var instances: [Instance]
        public init(service: ServiceName, spiffeID: String, mtls: MTLSModeView? = nil, instances: [Instance]) {
            self.service = service
            self.spiffeID = spiffeID
            self.mtls = mtls
            self.instances = instances
        }
    }
}
