import MeshCore

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`. Workloads of the mesh carry
/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
public struct SPIFFEID: Hashable, Sendable, CustomStringConvertible, Codable {
    public let trustDomain: String
    /// The path, starting with `/`; empty for the trust domain's own ID.
    public let path: String
    /// The service name when this is a workload ID in the default namespace. Worked out once:
    /// the proxies ask for it on every request.
    public let service: ServiceName?

    /// Namespace in which every workload lives for now; a later multi-tenant mesh adds more.
    public static let defaultNamespace = "default"
    /// The control plane's own identity lives outside workload namespaces so that no join
    /// token can ever mint it.
    public static let systemNamespace = "mesh-system"

    public init(trustDomain: String, path: String) throws {
        try SPIFFEID.validate(trustDomain: trustDomain)
        if !path.isEmpty {
            guard path.hasPrefix("/"), !path.hasSuffix("/") else {
                throw MeshError(.invalidSPIFFEID, "SPIFFE path '\(path)' must start with '/' and not end with '/'")
            }
            for segment in path.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
                guard !segment.isEmpty, segment != ".", segment != "..",
                      segment.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                    throw MeshError(.invalidSPIFFEID, "SPIFFE path '\(path)' has an invalid segment '\(segment)'")
                }
            }
        }
        self.trustDomain = trustDomain
        self.path = path
        self.service = Self.service(inPath: path)
    }

    /// The identity of a workload: `spiffe://<td>/ns/<namespace>/sa/<service>`.
    public init(trustDomain: String, namespace: String = SPIFFEID.defaultNamespace, service: ServiceName) throws {
        try self.init(trustDomain: trustDomain, path: "/ns/\(namespace)/sa/\(service.rawValue)")
    }

    /// Parses a URI such as found in an SVID's URI SAN.
    public init(parsing uri: String) throws {
        let scheme = "spiffe://"
        guard uri.lowercased().hasPrefix(scheme), uri.count <= 2048 else {
            throw MeshError(.invalidSPIFFEID, "'\(uri)' is not a SPIFFE ID: it must start with spiffe://")
        }
        let rest = uri.dropFirst(scheme.count)
        guard !rest.contains("?"), !rest.contains("#"), !rest.contains("%") else {
            throw MeshError(.invalidSPIFFEID, "SPIFFE ID '\(uri)' must not have a query, fragment or percent-encoding")
        }
        if let slash = rest.firstIndex(of: "/") {
            try self.init(trustDomain: String(rest[..<slash]), path: String(rest[slash...]))
        } else {
            try self.init(trustDomain: String(rest), path: "")
        }
    }

    public static func validate(trustDomain: String) throws {
        guard !trustDomain.isEmpty, trustDomain.count <= 255,
              trustDomain.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || "-._".contains($0) }) else {
            throw MeshError(.invalidSPIFFEID,
                            "trust domain '\(trustDomain)' may hold only lowercase letters, digits, '-', '.' and '_'")
        }
    }

    private static func service(inPath path: String) -> ServiceName? {
        let parts = path.split(separator: "/")
        guard parts.count == 4, parts[0] == "ns", parts[1] == Substring(SPIFFEID.defaultNamespace), parts[2] == "sa" else {
            return nil
        }
        return try? ServiceName(String(parts[3]))
    }

    public var description: String { "spiffe://\(trustDomain)\(path)" }

    // `service` follows from the path: equality and hashing leave it out.
    public static func == (lhs: SPIFFEID, rhs: SPIFFEID) -> Bool { lhs.path == rhs.path && lhs.trustDomain == rhs.trustDomain }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(trustDomain)
        hasher.combine(path)
    }

    public init(from decoder: Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
