/// Normalizes request paths before they are authorized, so that `/api/../admin`,
/// `//admin` and `/admin` cannot be three different things to the policy and one thing to
/// the app. The normalized form is what gets authorized *and* forwarded.
///
/// Rules (DESIGN.md §6): RFC 3986 §5.2.4 dot-segment removal, runs of `/` merged, and these
/// are refused outright (400): encoded `/` or `\` (`%2F`, `%5C`), NUL (raw or `%00`), a
/// fragment, a path that does not start with `/`, malformed percent-encoding. The query
/// string is kept as it came.
public enum PathNormalizer {
    /// Why a path was refused.
    public enum Rejection: Error, Equatable, Sendable, CustomStringConvertible {
        case notAbsolute
        case encodedSlash
        case encodedBackslash
        case nul
        case fragment
        case badPercentEncoding
        case tooLong

        public var description: String {
            switch self {
            case .notAbsolute: return "the request path must start with '/'"
            case .encodedSlash: return "the request path contains an encoded '/' (%2F)"
            case .encodedBackslash: return "the request path contains an encoded '\\' (%5C)"
            case .nul: return "the request path contains a NUL byte"
            case .fragment: return "the request target contains a fragment ('#')"
            case .badPercentEncoding: return "the request path has malformed percent-encoding"
            case .tooLong: return "the request target is longer than 8 KiB"
            }
        }
    }

    /// Splits `uri` into path and query, checks and normalizes the path, and returns the
    /// target to forward (`path` or `path?query`) together with the normalized path alone.
    public static func normalize(_ uri: String) -> Result<(target: String, path: String), Rejection> {
        let bytes = Array(uri.utf8)
        guard bytes.count <= 8192 else { return .failure(.tooLong) }
        if bytes.contains(UInt8(ascii: "#")) { return .failure(.fragment) }
        if bytes.contains(0) { return .failure(.nul) }
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.endIndex
        let rawPath = bytes[..<queryStart]
        guard rawPath.first == UInt8(ascii: "/") else { return .failure(.notAbsolute) }

        // Percent-encoding checks on the path only.
        var index = rawPath.startIndex
        while index < rawPath.endIndex {
            if rawPath[index] == UInt8(ascii: "%") {
                guard index + 2 < rawPath.endIndex,
                      let high = hexValue(rawPath[index + 1]), let low = hexValue(rawPath[index + 2]) else {
                    return .failure(.badPercentEncoding)
                }
                switch high << 4 | low {
                case 0x2F: return .failure(.encodedSlash)
                case 0x5C: return .failure(.encodedBackslash)
                case 0x00: return .failure(.nul)
                default: break
                }
                index += 3
            } else {
                index += 1
            }
        }

        // Segments, with merged slashes and RFC 3986 dot-segment removal.
        var output: [ArraySlice<UInt8>] = []
        let trailingSlash = rawPath.count > 1 && rawPath.last == UInt8(ascii: "/")
        var endsInDirectory = trailingSlash
        for segment in rawPath.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if isDot(segment) {
                endsInDirectory = true
                continue
            }
            if isDotDot(segment) {
                if !output.isEmpty { output.removeLast() }
                endsInDirectory = true
                continue
            }
            output.append(segment)
            endsInDirectory = false
        }
        if trailingSlash { endsInDirectory = true }
        var path: [UInt8] = [UInt8(ascii: "/")]
        for (i, segment) in output.enumerated() {
            if i > 0 { path.append(UInt8(ascii: "/")) }
            path.append(contentsOf: segment)
        }
        if endsInDirectory && !output.isEmpty { path.append(UInt8(ascii: "/")) }
        let normalizedPath = String(decoding: path, as: UTF8.self)
        let target = queryStart < bytes.endIndex
            ? normalizedPath + String(decoding: bytes[queryStart...], as: UTF8.self)
            : normalizedPath
        return .success((target, normalizedPath))
    }

    private static func isDot(_ segment: ArraySlice<UInt8>) -> Bool {
        segment.elementsEqual([UInt8(ascii: ".")]) || segment.elementsEqual(Array("%2e".utf8)) || segment.elementsEqual(Array("%2E".utf8))
    }

    private static func isDotDot(_ segment: ArraySlice<UInt8>) -> Bool {
        let lowered = segment.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }
        return lowered == Array("..".utf8) || lowered == Array("%2e.".utf8) || lowered == Array(".%2e".utf8)
            || lowered == Array("%2e%2e".utf8)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
