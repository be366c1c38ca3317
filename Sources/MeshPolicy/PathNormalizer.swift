/// Normalizes request paths before they are authorized, so that `/api/../admin`,
/// `//admin` and `/admin` cannot be three different things to the policy and one thing to
/// the app. The normalized form is what gets authorized *and* forwarded.
///
/// Rules (DESIGN.md §6): percent-encoded unreserved characters decoded and other escapes
/// upper-cased (RFC 3986 §6.2.2), dot-segment removal (§5.2.4, also for `%2E`), runs of `/`
/// merged; and these are refused outright (400) because apps disagree on what they mean:
/// encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, NUL (raw or `%00`), `;` path parameters,
/// escapes that do not decode to valid UTF-8 (overlong forms such as `%C0%AF`), a fragment,
/// a path that does not start with `/`, malformed percent-encoding. The query string is kept
/// as it came.
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
        case backslash
        case pathParameter
        case invalidUTF8

        public var description: String {
            switch self {
            case .notAbsolute: return "the request path must start with '/'"
            case .encodedSlash: return "the request path contains an encoded '/' (%2F)"
            case .encodedBackslash: return "the request path contains an encoded '\\' (%5C)"
            case .nul: return "the request path contains a NUL byte"
            case .fragment: return "the request target contains a fragment ('#')"
            case .badPercentEncoding: return "the request path has malformed percent-encoding"
            case .tooLong: return "the request target is longer than 8 KiB"
            case .backslash: return "the request path contains '\\'"
            case .pathParameter: return "the request path contains ';' path parameters"
            case .invalidUTF8: return "the request path's percent-encoding is not valid UTF-8 (e.g. an overlong form)"
            }
        }
    }

    /// Splits `uri` into path and query, checks and normalizes the path, and returns the
    /// target to forward (`path` or `path?query`) together with the normalized path alone.
    public static func normalize(_ uri: String) -> Result<(target: String, path: String), Rejection> {
        if let unchanged = alreadyNormal(uri) { return .success(unchanged) }
        return normalizeFully(uri)
    }

    /// The common case without copying: a path of unreserved characters, `/`, `:`, `@` and
    /// the sub-delimiters other than `;` — no `%`, no `\`, no empty, `.` or `..` segment —
    /// and a query without `#` or NUL. ``normalizeFully(_:)`` returns such a target unchanged
    /// (the tests check that the two agree), so it is returned as it is; nil sends anything
    /// else the full way. The inbound proxy normalizes every request's target.
    static func alreadyNormal(_ uri: String) -> (target: String, path: String)? {
        let utf8 = uri.utf8
        guard utf8.count <= 8192, utf8.first == UInt8(ascii: "/") else { return nil }
        var index = utf8.index(after: utf8.startIndex)
        var segmentLength = 0
        var dots = 0
        while index < utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "?") { break }
            if byte == UInt8(ascii: "/") {
                // The segment that ends here must be neither empty (`//`) nor a dot segment.
                if segmentLength == 0 || (dots == segmentLength && dots <= 2) { return nil }
                segmentLength = 0
                dots = 0
            } else {
                guard isPlainPathByte(byte) else { return nil }
                segmentLength += 1
                if byte == UInt8(ascii: ".") { dots += 1 }
            }
            utf8.formIndex(after: &index)
        }
        // The last segment may be empty (a trailing `/`), not a dot segment.
        if segmentLength > 0 && dots == segmentLength && dots <= 2 { return nil }
        guard index < utf8.endIndex else { return (uri, uri) }
        for byte in utf8[index...] where byte == UInt8(ascii: "#") || byte == 0 { return nil }
        return (uri, String(uri[..<index]))
    }

    /// ALPHA / DIGIT / "-" / "." / "_" / "~" / ":" / "@" / "!" / "$" / "&" / "'" / "(" / ")" /
    /// "*" / "+" / "," / "=": bytes the full normalization keeps as they are.
    private static func isPlainPathByte(_ byte: UInt8) -> Bool {
        if isUnreserved(byte) { return true }
        switch byte {
        case UInt8(ascii: ":"), UInt8(ascii: "@"), UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: "="):
            return true
        default:
            return false
        }
    }

    /// Every rule, byte by byte (``normalize(_:)`` without its shortcut).
    static func normalizeFully(_ uri: String) -> Result<(target: String, path: String), Rejection> {
        let bytes = Array(uri.utf8)
        guard bytes.count <= 8192 else { return .failure(.tooLong) }
        if bytes.contains(UInt8(ascii: "#")) { return .failure(.fragment) }
        if bytes.contains(0) { return .failure(.nul) }
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.endIndex
        let rawPath = bytes[..<queryStart]
        guard rawPath.first == UInt8(ascii: "/") else { return .failure(.notAbsolute) }

        // Percent-encoding: decode unreserved characters, upper-case the rest, refuse the
        // ambiguous ones. The result is what segments are built from.
        var decodedPath: [UInt8] = []
        decodedPath.reserveCapacity(rawPath.count)
        var fullyDecoded: [UInt8] = []  // every escape decoded, to check UTF-8 validity
        var index = rawPath.startIndex
        while index < rawPath.endIndex {
            let byte = rawPath[index]
            if byte == UInt8(ascii: "%") {
                guard index + 2 < rawPath.endIndex,
                      let high = hexValue(rawPath[index + 1]), let low = hexValue(rawPath[index + 2]) else {
                    return .failure(.badPercentEncoding)
                }
                let value = high << 4 | low
                switch value {
                case 0x2F: return .failure(.encodedSlash)
                case 0x5C: return .failure(.encodedBackslash)
                case 0x00: return .failure(.nul)
                case 0x3B: return .failure(.pathParameter)
                default: break
                }
                fullyDecoded.append(value)
                if isUnreserved(value) {
                    decodedPath.append(value)
                } else {
                    decodedPath.append(UInt8(ascii: "%"))
                    decodedPath.append(hexDigit(high))
                    decodedPath.append(hexDigit(low))
                }
                index += 3
            } else {
                if byte == UInt8(ascii: "\\") { return .failure(.backslash) }
                if byte == UInt8(ascii: ";") { return .failure(.pathParameter) }
                fullyDecoded.append(byte)
                decodedPath.append(byte)
                index += 1
            }
        }
        // The fully decoded path must be valid UTF-8 (no overlong `/`, no stray bytes).
        if !isValidUTF8Sequence(fullyDecoded) { return .failure(.invalidUTF8) }

        // Segments, with merged slashes and RFC 3986 dot-segment removal.
        var output: [ArraySlice<UInt8>] = []
        let trailingSlash = decodedPath.count > 1 && decodedPath.last == UInt8(ascii: "/")
        var endsInDirectory = trailingSlash
        for segment in decodedPath[...].split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
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

    /// ALPHA / DIGIT / "-" / "." / "_" / "~" (RFC 3986 §2.3): equivalent encoded or not.
    private static func isUnreserved(_ byte: UInt8) -> Bool {
        (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
            || byte == 0x2D || byte == 0x2E || byte == 0x5F || byte == 0x7E
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
    }

    /// Whether the bytes are valid UTF-8 (Swift's decoder refuses overlong forms and surrogates).
    private static func isValidUTF8Sequence(_ bytes: [UInt8]) -> Bool {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
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
