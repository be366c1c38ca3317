import MeshCore

/// Checks any resource before it is stored or sent, with an error that names the resource
/// and the field. The control plane runs it on apply, the CLI before sending.
public enum ResourceValidator {
    public static func validate(_ resource: MeshResource) throws {
        switch resource {
        case .authorizationPolicy(let document): _ = try PolicyCompiler.compile(document)
        case .serviceDefaults(let defaults): try validate(defaults)
        case .trafficPolicy(let policy): try validate(policy)
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

    public static func validate(_ policy: TrafficPolicy) throws {
        let name = policy.metadata.name
        func fail(_ field: String, _ why: String) -> MeshError {
            MeshError(.invalidRequest, "TrafficPolicy '\(name)': field '\(field)' \(why)")
        }
        do { _ = try ServiceName(name) } catch let error as MeshError {
            throw fail("metadata.name", "must be the destination service's name: \(error.message)")
        }
        if let balancer = policy.spec.loadBalancer, !TrafficPolicy.loadBalancers.contains(balancer) {
            throw fail("spec.loadBalancer", "must be one of \(TrafficPolicy.loadBalancers.joined(separator: ", ")), not '\(balancer)'")
        }
        if let outlier = policy.spec.outlierDetection {
            if let count = outlier.consecutiveFailures, !(0...1000).contains(count) {
                throw fail("spec.outlierDetection.consecutiveFailures", "must be 0 (off) to 1000, not \(count)")
            }
            if let text = outlier.baseEjection {
                let seconds: Double
                do { seconds = try DurationParser.seconds(text) } catch let error as MeshError {
                    throw fail("spec.outlierDetection.baseEjection", error.message)
                }
                guard seconds >= 0.1, seconds <= 3600 else {
                    throw fail("spec.outlierDetection.baseEjection", "must be 100ms to 1h, not \(text)")
                }
            }
            if let percent = outlier.maxEjectedPercent, !(0...100).contains(percent) {
                throw fail("spec.outlierDetection.maxEjectedPercent", "must be 0 to 100, not \(percent)")
            }
        }
        func duration(_ text: String?, _ field: String, within range: ClosedRange<Double>) throws {
            guard let text else { return }
            let seconds: Double
            do { seconds = try DurationParser.seconds(text) } catch let error as MeshError { throw fail(field, error.message) }
            guard range.contains(seconds) else { throw fail(field, "must be \(range.lowerBound)s to \(range.upperBound)s, not \(text)") }
        }
        func timeouts(_ timeouts: TrafficPolicy.Timeouts?, _ field: String) throws {
            try duration(timeouts?.request, field + ".request", within: 0.001...3600)
            try duration(timeouts?.perTry, field + ".perTry", within: 0.001...3600)
        }
        func retries(_ retries: TrafficPolicy.Retries?, _ field: String) throws {
            guard let retries else { return }
            if let attempts = retries.attempts, !(0...10).contains(attempts) {
                throw fail(field + ".attempts", "must be 0 (none) to 10, not \(attempts)")
            }
            for condition in retries.on ?? [] {
                let status = Int(condition).map { (500...599).contains($0) } ?? false
                guard status || TrafficPolicy.retryConditions.contains(condition) else {
                    throw fail(field + ".on", "holds '\(condition)'; use 5xx status codes, connect-failure or reset")
                }
            }
            if let percent = retries.budget?.percent, !(0...1000).contains(percent) {
                throw fail(field + ".budget.percent", "must be 0 to 1000, not \(percent)")
            }
            if let minimum = retries.budget?.minPerSecond, !(0...100_000).contains(minimum) {
                throw fail(field + ".budget.minPerSecond", "must be 0 to 100000, not \(minimum)")
            }
            try duration(retries.backoff?.base, field + ".backoff.base", within: 0.001...60)
            try duration(retries.backoff?.max, field + ".backoff.max", within: 0.001...60)
        }
        try timeouts(policy.spec.timeouts, "spec.timeouts")
        try duration(policy.spec.timeouts?.idle, "spec.timeouts.idle", within: 1...86400)
        try retries(policy.spec.retries, "spec.retries")
        let limits = policy.spec.rateLimits ?? []
        guard limits.count <= 32 else { throw fail("spec.rateLimits", "may hold at most 32 entries") }
        for (index, limit) in limits.enumerated() {
            let field = "spec.rateLimits[\(index)]"
            guard limit.requestsPerSecond > 0, limit.requestsPerSecond <= 1_000_000 else {
                throw fail(field + ".requestsPerSecond", "must be above 0 and at most 1000000")
            }
            if let burst = limit.burst, !(1...10_000_000).contains(burst) { throw fail(field + ".burst", "must be 1 to 10000000") }
            if let by = limit.by, !["caller", "all"].contains(by) { throw fail(field + ".by", "must be caller or all, not '\(by)'") }
            if let prefix = limit.pathPrefix, !prefix.hasPrefix("/") || prefix.utf8.count > 1024 {
                throw fail(field + ".pathPrefix", "must start with '/' (at most 1024 bytes)")
            }
        }
        let routes = policy.spec.routes ?? []
        guard routes.count <= 64 else { throw fail("spec.routes", "may hold at most 64 routes") }
        for (index, route) in routes.enumerated() {
            let field = "spec.routes[\(index)]"
            if let to = route.to, to.isEmpty {
                throw fail(field + ".to", "must name the labels of the instances to route to (or be left out when the route only sets timeouts or retries)")
            }
            guard route.to != nil || route.timeouts != nil || route.retries != nil else {
                throw fail(field, "must route somewhere (to: the labels of the instances) or set timeouts or retries")
            }
            if route.timeouts?.idle != nil {
                throw fail(field + ".timeouts.idle", "applies to whole connections, which carry requests of every route; set spec.timeouts.idle")
            }
            if route.retries?.budget != nil {
                throw fail(field + ".retries.budget", "is the service's, shared by its routes; set spec.retries.budget")
            }
            try timeouts(route.timeouts, field + ".timeouts")
            try retries(route.retries, field + ".retries")
            guard route.match.headers?.isEmpty == false || route.match.pathPrefix != nil else {
                throw fail(field + ".match", "must give headers, pathPrefix or both")
            }
            if let prefix = route.match.pathPrefix, !prefix.hasPrefix("/") { throw fail(field + ".match.pathPrefix", "must start with '/'") }
            for name in (route.match.headers ?? [:]).keys where name.isEmpty || name.contains(where: { $0 == ":" || $0 == " " }) {
                throw fail(field + ".match.headers", "holds an invalid header name '\(name)'")
            }
        }
        let split = policy.spec.split ?? []
        guard split.count <= 16 else { throw fail("spec.split", "may hold at most 16 subsets") }
        for (index, entry) in split.enumerated() {
            guard !entry.labels.isEmpty else { throw fail("spec.split[\(index)].labels", "must name the subset's labels, e.g. {version: v2}") }
            guard (0...1000).contains(entry.weight) else { throw fail("spec.split[\(index)].weight", "must be 0 to 1000") }
        }
        if !split.isEmpty, split.allSatisfy({ $0.weight == 0 }) { throw fail("spec.split", "needs at least one positive weight") }
        if let maximum = policy.spec.circuitBreaker?.maxRequests, !(1...1_000_000).contains(maximum) {
            throw fail("spec.circuitBreaker.maxRequests", "must be 1 to 1000000")
        }
        if let maximum = policy.spec.circuitBreaker?.maxPendingRequests, !(1...1_000_000).contains(maximum) {
            throw fail("spec.circuitBreaker.maxPendingRequests", "must be 1 to 1000000")
        }
        if let delay = policy.spec.fault?.delay {
            guard (0...100).contains(delay.percent) else { throw fail("spec.fault.delay.percent", "must be 0 to 100") }
            try duration(delay.duration, "spec.fault.delay.duration", within: 0.001...300)
        }
        if let abort = policy.spec.fault?.abort {
            guard (0...100).contains(abort.percent) else { throw fail("spec.fault.abort.percent", "must be 0 to 100") }
            guard (200...599).contains(abort.status) else { throw fail("spec.fault.abort.status", "must be an HTTP status, 200 to 599") }
        }
    }
}
