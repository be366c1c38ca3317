import struct Foundation.Date
import MeshCore

/// What the evaluator knows about one request (L7) or one connection (L4: no method, path
/// or headers). Built by the proxy from its local state; no control-plane round trip.
public struct RequestAttributes: Sendable {
    public var destination: ServiceName
    public var destinationLabels: [String: String]
    /// The caller's verified SPIFFE ID; nil for a plaintext caller (permissive mode).
    public var callerIdentity: String?
    public var callerService: ServiceName?
    public var callerLabels: [String: String]
    public var callerAddress: String?
    public var port: Int
    /// nil for a connection-level (L4) decision.
    public var method: String?
    /// The normalized path.
    public var path: String?
    /// Lowercased names.
    public var headers: [String: [String]]
    /// An opaque TCP stream (raw TCP through the mesh): there will never be HTTP attributes,
    /// so a deny rule's HTTP conditions apply to the whole connection (as Istio does for
    /// TCP), and an allow rule that needs them never matches. Fail closed either way.
    public var opaque = false
    public var now: Date

    public init(destination: ServiceName, destinationLabels: [String: String] = [:], callerIdentity: String?,
                callerService: ServiceName? = nil, callerLabels: [String: String] = [:], callerAddress: String? = nil,
                port: Int, method: String? = nil, path: String? = nil, headers: [String: [String]] = [:], now: Date = Date()) {
        self.destination = destination
        self.destinationLabels = destinationLabels
        self.callerIdentity = callerIdentity
        self.callerService = callerService
        self.callerLabels = callerLabels
        self.callerAddress = callerAddress
        self.port = port
        self.method = method
        self.path = path
        self.headers = headers
        self.now = now
    }

    var isL7: Bool { method != nil }
}

/// The outcome, with enough detail to answer "why was this denied?".
public struct Decision: Sendable, Equatable {
    /// Stable codes, sent to the caller in a response header on denial.
    public enum Code: String, Sendable {
        case allowedByPolicy = "allowed-by-policy"
        case deniedByPolicy = "denied-by-policy"
        /// Default deny: no allow policy matched.
        case deniedNoMatchingAllow = "denied-no-matching-allow"
        /// Mesh-wide audit default: nothing allowed it, but the request passes and is recorded.
        case allowedAuditDefault = "allowed-audit-default"
    }

    public var allowed: Bool
    public var code: Code
    /// The policy that decided, if one did.
    public var policy: String?
    /// Policies in audit mode (or the default) that would have denied this request.
    public var wouldDeny: [String]
    /// One line per applicable policy: matched or not, and why.
    public var explanation: [String]
}

/// Evaluates policies against requests. Pure and synchronous: the proxy calls it on the
/// event loop with its current snapshot of policies.
public struct PolicyEvaluator: Sendable {
    public enum DefaultMode: String, Sendable { case deny, audit }

    public let policies: [AuthorizationPolicy]
    public let defaultMode: DefaultMode

    public init(policies: [AuthorizationPolicy], defaultMode: DefaultMode = .deny) {
        self.policies = policies
        self.defaultMode = defaultMode
    }

    /// Whether any policy for this destination needs L7 attributes; when none does, the
    /// decision is made once per connection.
    public func needsL7(for service: ServiceName, labels: [String: String]) -> Bool {
        policies.contains { $0.target.matches(service: service, labels: labels) && $0.needsL7 }
    }

    public func evaluate(_ request: RequestAttributes) -> Decision {
        var explanation: [String] = []
        var enforcedDeny: String?
        var enforcedAllow: String?
        var auditDeny: [String] = []
        var auditAllow = false
        for policy in policies where policy.target.matches(service: request.destination, labels: request.destinationLabels) {
            if let expires = policy.expires, expires <= request.now {
                explanation.append("\(policy.name): expired at \(expires), ignored")
                continue
            }
            let (matched, why) = match(policy, request)
            explanation.append("\(policy.name) (\(policy.action.rawValue), \(policy.mode.rawValue)): \(why)")
            guard matched else { continue }
            switch (policy.action, policy.mode) {
            case (.deny, .enforce): if enforcedDeny == nil { enforcedDeny = policy.name }
            case (.allow, .enforce): if enforcedAllow == nil { enforcedAllow = policy.name }
            case (.deny, .audit): auditDeny.append(policy.name)
            case (.allow, .audit): auditAllow = true
            }
        }
        // Deny wins over allow.
        if let enforcedDeny {
            return Decision(allowed: false, code: .deniedByPolicy, policy: enforcedDeny, wouldDeny: auditDeny, explanation: explanation)
        }
        if let enforcedAllow {
            return Decision(allowed: true, code: .allowedByPolicy, policy: enforcedAllow, wouldDeny: auditDeny, explanation: explanation)
        }
        switch defaultMode {
        case .deny:
            explanation.append("no allow policy matched: default deny")
            return Decision(allowed: false, code: .deniedNoMatchingAllow, policy: nil, wouldDeny: auditDeny, explanation: explanation)
        case .audit:
            // An audit-mode allow that matched means the policy set being trialled allows it;
            // otherwise default deny would have refused it once enforced.
            let would = auditDeny + (auditAllow ? [] : ["default-deny"])
            explanation.append("no allow policy matched: mesh default is audit, request passes")
            return Decision(allowed: true, code: .allowedAuditDefault, policy: nil, wouldDeny: would, explanation: explanation)
        }
    }

    private func match(_ policy: AuthorizationPolicy, _ request: RequestAttributes) -> (Bool, String) {
        var reasons: [String] = []
        for (index, rule) in policy.rules.enumerated() {
            if let miss = missFrom(rule.from, request) {
                reasons.append("rule \(index + 1): \(miss)")
                continue
            }
            if let miss = missTo(rule.to, request, deny: policy.action == .deny) {
                reasons.append("rule \(index + 1): \(miss)")
                continue
            }
            return (true, "rule \(index + 1) matched")
        }
        return (false, reasons.isEmpty ? "no rules" : "not matched (" + reasons.joined(separator: "; ") + ")")
    }

    /// nil when some source matches; otherwise why none did.
    private func missFrom(_ sources: [AuthorizationPolicy.Source], _ request: RequestAttributes) -> String? {
        guard !sources.isEmpty else { return nil }
        var misses: [String] = []
        for source in sources {
            if let miss = missSource(source, request) { misses.append(miss) } else { return nil }
        }
        return "caller " + misses.joined(separator: " / ")
    }

    private func missSource(_ source: AuthorizationPolicy.Source, _ request: RequestAttributes) -> String? {
        let caller = request.callerIdentity
        if source.unauthenticated && caller != nil { return "is authenticated (rule wants unauthenticated)" }
        if !source.identities.isEmpty {
            guard let caller, source.identities.contains(where: { $0.matches(caller) }) else {
                return "\(caller ?? "unauthenticated") is not \(source.identities.map(\.description).joined(separator: " or "))"
            }
        }
        if !source.services.isEmpty {
            guard let service = request.callerService, source.services.contains(service) else {
                return "service \(request.callerService?.rawValue ?? "none") is not \(source.services.map(\.rawValue).joined(separator: " or "))"
            }
        }
        if let labels = source.labels {
            // Labels belong to mesh workloads: an anonymous caller has none to match, not
            // even a negative expression such as `tier!=debug`.
            guard request.callerService != nil else { return "has no labels (not a mesh workload)" }
            if !labels.matches(request.callerLabels) { return "labels do not match '\(labels)'" }
        }
        if !source.ipBlocks.isEmpty {
            guard let address = request.callerAddress, source.ipBlocks.contains(where: { $0.contains(address) }) else {
                return "address \(request.callerAddress ?? "unknown") is not in \(source.ipBlocks.map(\.description).joined(separator: ", "))"
            }
        }
        return nil
    }

    private func missTo(_ operations: [AuthorizationPolicy.Operation], _ request: RequestAttributes, deny: Bool) -> String? {
        guard !operations.isEmpty else { return nil }
        var misses: [String] = []
        for operation in operations {
            if let miss = missOperation(operation, request, deny: deny) { misses.append(miss) } else { return nil }
        }
        return "request " + misses.joined(separator: " / ")
    }

    private func missOperation(_ operation: AuthorizationPolicy.Operation, _ request: RequestAttributes, deny: Bool) -> String? {
        if !operation.ports.isEmpty && !operation.ports.contains(request.port) {
            return "port \(request.port) is not \(operation.ports.map(String.init).joined(separator: " or "))"
        }
        if operation.isL7 && !request.isL7 {
            if request.opaque {
                // A deny rule's methods/paths/headers cannot be checked on raw TCP: the
                // whole stream is denied. An allow rule that needs them cannot allow it.
                return deny ? nil : "needs HTTP attributes, and this is an opaque TCP stream"
            }
            return "needs HTTP attributes (decided per request)"
        }
        if !operation.methods.isEmpty {
            guard let method = request.method, operation.methods.contains(where: { $0.uppercased() == method }) else {
                return "method \(request.method ?? "-") is not \(operation.methods.joined(separator: " or "))"
            }
        }
        if !operation.paths.isEmpty {
            guard let path = request.path, operation.paths.contains(where: { $0.matches(path) }) else {
                return "path \(request.path ?? "-") is not \(operation.paths.map(\.description).joined(separator: " or "))"
            }
        }
        for header in operation.headers {
            let values = request.headers[header.name] ?? []
            if let value = header.value {
                guard values.contains(value) else { return "header \(header.name) is not '\(value)'" }
            } else if values.isEmpty {
                return "header \(header.name) is missing"
            }
        }
        return nil
    }
}
