import MeshCore

extension RegistrySnapshot {
    /// The inbound mTLS mode of `service` as its proxies enforce it: the ServiceDefaults
    /// setting when there is one, else what the instances' `--mtls` flags report.
    /// Instances that disagree make the service `mixed` (a plaintext caller then reaches
    /// only some of them).
    func mtlsMode(of service: ServiceName) -> AdminAPI.MTLSModeView {
        if let central = policies.defaults(for: service)?.mtls {
            return AdminAPI.MTLSModeView(mode: central, source: "\(ServiceDefaults.kindName)/\(service)")
        }
        // Proxies that predate mode reporting run strict unless told otherwise.
        let modes = endpoints(of: service).map { $0.mtls ?? "strict" }
        guard let first = modes.first else { return AdminAPI.MTLSModeView(mode: "strict", source: "default") }
        if modes.allSatisfy({ $0 == first }) { return AdminAPI.MTLSModeView(mode: first, source: "proxy flag") }
        let counts = Dictionary(grouping: modes, by: { $0 }).map { "\($0.value.count) \($0.key)" }.sorted()
        return AdminAPI.MTLSModeView(mode: "mixed", source: "proxy flags: \(counts.joined(separator: ", "))")
    }
}
