import struct Foundation.Date
import MeshCore

/// An authorization policy: who may (or may not) call which workloads, and how.
///
/// Modeled on Istio's AuthorizationPolicy and Linkerd's audit mode: `action` allow or deny
/// (deny wins), `mode` enforce or audit (audit records "would deny" but changes nothing), an
/// optional expiry for time-bound access. A rule matches when any of its `from` sources and
/// any of its `to` operations match; an empty list matches anything.
public struct AuthorizationPolicy: Sendable, Equatable {
    public enum Action: String, Sendable, Codable { case allow, deny }
    public enum Mode: String, Sendable, Codable { case enforce, audit }

    /// Which destination workloads the policy protects.
    public enum Target: Sendable, Equatable {
        case service(ServiceName)
        case labels(LabelSelector)
        /// Every meshed workload.
        case all

        public func matches(service: ServiceName, labels: [String: String]) -> Bool {
            switch self {
            case .service(let name): return name == service
            case .labels(let selector): return selector.matches(labels)
            case .all: return true
            }
        }
    }

    public struct Rule: Sendable, Equatable {
        public var from: [Source]
        public var to: [Operation]
        public init(from: [Source] = [], to: [Operation] = []) {
            self.from = from
            self.to = to
        }
    }

    /// Who is calling. Every field that is set must match; within a field any entry may.
    public struct Source: Sendable, Equatable {
        public var identities: [IdentityMatch] = []
        public var services: [ServiceName] = []
        public var labels: LabelSelector?
        /// true: only callers without a verified identity (plaintext, permissive mode).
        public var unauthenticated = false
        public var ipBlocks: [CIDR] = []
        public init(identities: [IdentityMatch] = [], services: [ServiceName] = [], labels: LabelSelector? = nil,
                    unauthenticated: Bool = false, ipBlocks: [CIDR] = []) {
            self.identities = identities
            self.services = services
            self.labels = labels
            self.unauthenticated = unauthenticated
            self.ipBlocks = ipBlocks
        }
    }

    /// What is being called. Every field that is set must match; within a field any entry may.
    /// `methods`, `paths` and `headers` are L7: a rule that uses them never matches a
    /// connection-level (L4) check.
    public struct Operation: Sendable, Equatable {
        public var ports: [Int] = []
        public var methods: [String] = []
        public var paths: [PathMatch] = []
        public var headers: [HeaderMatch] = []
        public init(ports: [Int] = [], methods: [String] = [], paths: [PathMatch] = [], headers: [HeaderMatch] = []) {
            self.ports = ports
            self.methods = methods
            self.paths = paths
            self.headers = headers
        }
        public var isL7: Bool { !methods.isEmpty || !paths.isEmpty || !headers.isEmpty }
    }

    public var name: String
    public var target: Target
    public var action: Action
    public var mode: Mode
    public var rules: [Rule]
    public var expires: Date?

    public init(name: String, target: Target, action: Action = .allow, mode: Mode = .enforce, rules: [Rule], expires: Date? = nil) {
        self.name = name
        self.target = target
        self.action = action
        self.mode = mode
        self.rules = rules
        self.expires = expires
    }

    /// Whether any rule uses L7 attributes (then the decision is made per request).
    public var needsL7: Bool { rules.contains { $0.to.contains(where: \.isL7) } }
}

/// A SPIFFE ID match: exact, or a prefix written with a trailing `*`
/// (`spiffe://mesh.local/ns/default/sa/*`).
public struct IdentityMatch: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    public init(_ pattern: String) { self.pattern = pattern }
    public func matches(_ identity: String) -> Bool {
        pattern.hasSuffix("*") ? identity.hasPrefix(pattern.dropLast()) : identity == pattern
    }
    public var description: String { pattern }
}

/// A path match: exact (`/health`), prefix (`/api/` followed by `*`: `/api/*` matches `/api/x/y`),
/// or segment globs where `*` stands for exactly one segment (`/users/*/orders`).
/// Always applied to the normalized path.
public struct PathMatch: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    public init(_ pattern: String) { self.pattern = pattern }

    public func matches(_ path: String) -> Bool {
        // `/admin` and `/admin/` are one resource to most frameworks: match both.
        let path = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if pattern.hasSuffix("/*") && !pattern.dropLast(2).contains("*") {
            let prefix = pattern.dropLast()  // keeps the slash: `/api/`
            return path.hasPrefix(prefix) || path == String(prefix.dropLast())
        }
        guard pattern.contains("*") else { return path == pattern }
        let want = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let have = path.split(separator: "/", omittingEmptySubsequences: false)
        guard want.count == have.count else { return false }
        return zip(want, have).allSatisfy { $0 == "*" ? !$1.isEmpty : $0 == $1 }
    }

    public var description: String { pattern }
}

/// A request header match: present with exactly this value, or (value nil) present at all.
public struct HeaderMatch: Sendable, Equatable {
    public let name: String
    public let value: String?
    public init(name: String, value: String?) {
        self.name = name.lowercased()
        self.value = value
    }
}
