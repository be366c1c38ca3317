/// The name of a service in the mesh, e.g. `api`.
///
/// Service names end up in SPIFFE IDs, HTTP `Host` headers and SQL rows, so they are held to
/// DNS-label rules: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter and not
/// ending with `-`. Validation happens once, at the edge; everything inside trusts the type.
public struct ServiceName: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public let rawValue: String

    /// Validates `raw` as a service name.
    /// - Throws: ``MeshError`` with code `invalid-service-name` that says which rule failed.
    public init(_ raw: String) throws {
        guard let first = raw.utf8.first, !raw.isEmpty, raw.utf8.count <= 63 else {
            throw MeshError(.invalidServiceName, "service name '\(raw)' must be 1 to 63 characters long")
        }
        guard first >= UInt8(ascii: "a") && first <= UInt8(ascii: "z") else {
            throw MeshError(.invalidServiceName, "service name '\(raw)' must start with a lowercase letter")
        }
        for byte in raw.utf8 {
            let ok = (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: "-")
            guard ok else {
                throw MeshError(.invalidServiceName, "service name '\(raw)' may hold only a-z, 0-9 and '-'")
            }
        }
        guard raw.utf8.last != UInt8(ascii: "-") else {
            throw MeshError(.invalidServiceName, "service name '\(raw)' must not end with '-'")
        }
        self.rawValue = raw
    }

    public var description: String { rawValue }

    public static func < (lhs: ServiceName, rhs: ServiceName) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        try self.init(try container.decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
