import MeshCore

/// Turns operator-written ``PolicyDocument``s into the evaluator's model, refusing anything
/// ambiguous with an error that names the policy and the field.
public enum PolicyCompiler {
    public static func compile(_ document: PolicyDocument) throws -> AuthorizationPolicy {
        let name = document.metadata.name
        func fail(_ field: String, _ why: String) -> MeshError {
            MeshError(.invalidRequest, "AuthorizationPolicy '\(name)': field '\(field)' \(why)")
        }
        guard document.kind == PolicyDocument.kindName else {
            throw MeshError(.invalidRequest, "resource '\(name)': field 'kind' is '\(document.kind)'; only \(PolicyDocument.kindName) is known")
        }
        guard !name.isEmpty, name.count <= 63,
              name.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }) else {
            throw MeshError(.invalidRequest, "resource name '\(name)': field 'metadata.name' must be 1 to 63 of a-z, 0-9 and '-'")
        }
        let spec = document.spec
        let target: AuthorizationPolicy.Target
        switch (spec.selector?.service, spec.selector?.labels) {
        case (.some, .some): throw fail("spec.selector", "must name a service or a label expression, not both")
        case (.some(let service), nil):
            do { target = .service(try ServiceName(service)) } catch let error as MeshError {
                throw fail("spec.selector.service", error.message)
            }
        case (nil, .some(let labels)):
            do { target = .labels(try LabelSelector(parsing: labels)) } catch let error as MeshError {
                throw fail("spec.selector.labels", error.message)
            }
        case (nil, nil): target = .all
        }
        guard let action = AuthorizationPolicy.Action(rawValue: spec.action ?? "allow") else {
            throw fail("spec.action", "must be allow or deny")
        }
        guard let mode = AuthorizationPolicy.Mode(rawValue: spec.mode ?? "enforce") else {
            throw fail("spec.mode", "must be enforce or audit")
        }
        guard !spec.rules.isEmpty else { throw fail("spec.rules", "must hold at least one rule ({} matches every request)") }
        var rules: [AuthorizationPolicy.Rule] = []
        for (r, rule) in spec.rules.enumerated() {
            var sources: [AuthorizationPolicy.Source] = []
            for (s, source) in (rule.from ?? []).enumerated() {
                let at = "spec.rules[\(r)].from[\(s)]"
                var compiled = AuthorizationPolicy.Source()
                for identity in source.identities ?? [] {
                    // A prefix must end at a segment boundary: `…/sa/*`, never `…/sa/web*`
                    // (which would also match `web-admin`).
                    let exact = identity.hasSuffix("/*") ? String(identity.dropLast(2)) : identity
                    let domain = exact.dropFirst("spiffe://".count).prefix { $0 != "/" }
                    guard exact.hasPrefix("spiffe://"), !exact.contains("*"), !domain.isEmpty,
                          domain.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || "-._".contains($0) }) else {
                        throw fail("\(at).identities", "entry '\(identity)' must be a spiffe:// ID (lowercase trust domain), or one ending in '/*'")
                    }
                    compiled.identities.append(IdentityMatch(identity))
                }
                do { compiled.services = try (source.services ?? []).map { try ServiceName($0) } } catch let error as MeshError {
                    throw fail("\(at).services", error.message)
                }
                if let labels = source.labels {
                    do { compiled.labels = try LabelSelector(parsing: labels) } catch let error as MeshError {
                        throw fail("\(at).labels", error.message)
                    }
                }
                compiled.unauthenticated = source.unauthenticated ?? false
                do { compiled.ipBlocks = try (source.ipBlocks ?? []).map { try CIDR(parsing: $0) } } catch let error as MeshError {
                    throw fail("\(at).ipBlocks", error.message)
                }
                sources.append(compiled)
            }
            var operations: [AuthorizationPolicy.Operation] = []
            for (o, operation) in (rule.to ?? []).enumerated() {
                let at = "spec.rules[\(r)].to[\(o)]"
                let ports = operation.ports ?? []
                guard ports.allSatisfy({ (1...65535).contains($0) }) else { throw fail("\(at).ports", "must be 1 to 65535") }
                let methods = (operation.methods ?? []).map { $0.uppercased() }
                guard methods.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isLetter } }) else {
                    throw fail("\(at).methods", "must be HTTP method names such as GET")
                }
                var paths: [PathMatch] = []
                for path in operation.paths ?? [] {
                    guard path.hasPrefix("/") else { throw fail("\(at).paths", "entry '\(path)' must start with '/'") }
                    guard path.split(separator: "/").allSatisfy({ !$0.contains("*") || $0 == "*" }) else {
                        throw fail("\(at).paths", "entry '\(path)': '*' must be a whole segment (/api/* or /users/*/orders)")
                    }
                    // Patterns are compared with normalized paths, so they must be normal too.
                    guard case .success(let normal) = PathNormalizer.normalize(path.replacingStars()), normal.path == path.replacingStars() else {
                        throw fail("\(at).paths", "entry '\(path)' is not a normalized path (no '..', '//', encoded '/')")
                    }
                    paths.append(PathMatch(path))
                }
                let headers = (operation.headers ?? []).map { HeaderMatch(name: $0.name, value: $0.value) }
                operations.append(AuthorizationPolicy.Operation(ports: ports, methods: methods, paths: paths, headers: headers))
            }
            rules.append(AuthorizationPolicy.Rule(from: sources, to: operations))
        }
        return AuthorizationPolicy(name: name, target: target, action: action, mode: mode, rules: rules, expires: spec.expires)
    }

    /// Compiles a whole set; duplicate names are refused.
    public static func compile(_ set: PolicySet) throws -> PolicyEvaluator {
        var seen = Set<String>()
        var policies: [AuthorizationPolicy] = []
        for document in set.policies {
            guard seen.insert(document.metadata.name).inserted else {
                throw MeshError(.invalidRequest, "AuthorizationPolicy '\(document.metadata.name)' appears twice")
            }
            policies.append(try compile(document))
        }
        guard let mode = PolicyEvaluator.DefaultMode(rawValue: set.defaultMode) else {
            throw MeshError(.invalidRequest, "default policy mode '\(set.defaultMode)' must be deny or audit")
        }
        return PolicyEvaluator(policies: policies, defaultMode: mode)
    }
}

private extension String {
    /// `*` segments replaced by a placeholder so that a pattern can be checked for normal form.
    func replacingStars() -> String {
        split(separator: "/", omittingEmptySubsequences: false).map { $0 == "*" ? "x" : String($0) }.joined(separator: "/")
    }
}
