/// Labels attached to a service instance (`version=v2`, `zone=eu-1`), as set by the proxy's
/// `--label KEY=VALUE` flags. Keys and values are short printable tokens.
public struct Labels: Hashable, Sendable, Codable {
    public var values: [String: String]

    public init(_ values: [String: String] = [:]) { self.values = values }

    /// Parses `KEY=VALUE` flags.
    /// - Throws: ``MeshError`` `invalid-label` naming the bad flag.
    public init(parsing flags: [String]) throws {
        var values: [String: String] = [:]
        for flag in flags {
            guard let eq = flag.firstIndex(of: "=") else {
                throw MeshError(.invalidLabel, "label '\(flag)' must look like KEY=VALUE")
            }
            let key = String(flag[..<eq]), value = String(flag[flag.index(after: eq)...])
            try Labels.check(key, what: "key", in: flag)
            try Labels.check(value, what: "value", in: flag, allowEmpty: true)
            values[key] = value
        }
        self.values = values
    }

    private static func check(_ text: String, what: String, in flag: String, allowEmpty: Bool = false) throws {
        guard allowEmpty || !text.isEmpty, text.utf8.count <= 63 else {
            throw MeshError(.invalidLabel, "label '\(flag)': \(what) must be 1 to 63 characters")
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")
        guard text.allSatisfy({ allowed.contains($0) }) else {
            throw MeshError(.invalidLabel, "label '\(flag)': \(what) may hold only letters, digits and - _ . /")
        }
    }

    public init(from decoder: Decoder) throws {
        values = try decoder.singleValueContainer().decode([String: String].self)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values)
    }
}
