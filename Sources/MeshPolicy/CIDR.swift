#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MeshCore

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `fd00::/8`, for admitting non-mesh callers by
/// address.
public struct CIDR: Sendable, Equatable, CustomStringConvertible {
    public let network: [UInt8]
    public let prefixLength: Int
    public let description: String

    /// - Throws: ``MeshError`` `invalid-request` for anything that is not ADDRESS/PREFIX.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty, let address = CIDR.bytes(of: String(first)) else {
            throw MeshError(.invalidRequest, "'\(text)' is not a CIDR block: the address does not parse")
        }
        let maxPrefix = address.count * 8
        let prefix = parts.count == 2 ? Int(parts[1]) : maxPrefix
        guard let prefix, (0...maxPrefix).contains(prefix) else {
            throw MeshError(.invalidRequest, "'\(text)' is not a CIDR block: the prefix must be 0 to \(maxPrefix)")
        }
        self.network = CIDR.masked(address, prefix)
        self.prefixLength = prefix
        self.description = text
    }

    public func contains(_ address: String) -> Bool {
        guard let bytes = CIDR.bytes(of: address), bytes.count == network.count else { return false }
        return CIDR.masked(bytes, prefixLength) == network
    }

    static func bytes(of text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            // An IPv4-mapped address (::ffff:a.b.c.d, as a dual-stack socket reports IPv4
            // callers) is that IPv4 address.
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        }
        return nil
    }

    static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, prefix - index * 8))
            return bits == 8 ? byte : byte & ~(UInt8.max >> bits)
        }
    }
}
