import MeshCore

/// Checks any resource before it is stored or sent, with an error that names the resource
/// and the field. The control plane runs it on apply, the CLI before sending.
public enum ResourceValidator {
    public static func validate(_ resource: MeshResource) throws {
        switch resource {
        case .authorizationPolicy(let document): _ = try PolicyCompiler.compile(document)
        case .serviceDefaults(let defaults): try validate(defaults)
        }
    }

    /// Checks a whole apply: every resource valid and no kind/name twice.
    public static func validate(_ resources: [MeshResource]) throws {
        var seen = Set<String>()
        for resource in resources {
            try validate(resource)
            guard seen.insert("\(resource.kind)/\(resource.name)").inserted else {
                throw MeshError(.invalidRequest, "\(resource.kind) '\(resource.name)' appears twice in one apply")
            }
        }
    }

    public static func validate(_ defaults: ServiceDefaults) throws {
        let name = defaults.metadata.name
        func fail(_ field: String, _ why: String) -> MeshError {
            MeshError(.invalidRequest, "ServiceDefaults '\(name)': field '\(field)' \(why)")
        }
        do { _ = try ServiceName(name) } catch let error as MeshError {
            throw fail("metadata.name", "must be the service's name: \(error.message)")
        }
        if let mode = defaults.spec.mtls, !["strict", "permissive"].contains(mode) {
            throw fail("spec.mtls", "must be strict or permissive, not '\(mode)'")
        }
        let labels = defaults.spec.labels ?? [:]
        guard labels.count <= 32 else { throw fail("spec.labels", "may hold at most 32 labels") }
        do { _ = try Labels(parsing: labels.map { "\($0.key)=\($0.value)" }) } catch let error as MeshError {
            throw fail("spec.labels", error.message)
        }
        guard defaults.spec.mtls != nil || !labels.isEmpty else {
            throw fail("spec", "sets nothing; give mtls, labels or both")
        }
    }
}
