import NIOCore
import NIOHTTP1

/// Reads the head of a request the express path may carry (``ExpressHandler``), straight from
/// the connection's bytes.
///
/// It recognizes a strict subset of HTTP/1.1 and nothing else: `GET`, `HEAD`, `POST`, `PUT`,
/// `PATCH` or `DELETE` of an origin-form target, `HTTP/1.1`, CRLF line ends, header names of
/// token characters, visible ASCII values, exactly one `Host`, no body or one framed by a single
/// `Content-Length` of digits of at most ``maxBodyBytes``, and nothing else that changes the
/// framing or the connection (`Transfer-Encoding`, `TE`, `Upgrade`, `Expect`, a
/// `Connection` other than `keep-alive` or `close`), within the header limits. For anything
/// else it says ``Outcome/unsupported`` and the connection goes to the full HTTP stack
/// (NIO's llhttp decoder), which answers it — a 400, a 431, a body, an upgrade. So the two
/// parsers never read the same bytes differently: what this one accepts, llhttp reads the
/// same way, and what it is unsure of, it does not accept.
enum ExpressRequestHead {
    enum Outcome {
        /// Not the whole head yet.
        case incomplete
        /// Not for the express path (the reason is for tests and debug logs).
        case unsupported(String)
        /// The head, its size in bytes, whether the caller keeps the connection open, and the
        /// size of the body after the head (`Content-Length`; 0 without one).
        case request(HTTPRequestHead, length: Int, keepAlive: Bool, bodyLength: Int)
    }

    /// The largest body the express path carries (read whole, then sent with its head in one
    /// write, and kept for a replay): a small API call's. Larger ones stream on the full stack.
    static let maxBodyBytes = 16 * 1024

    /// Parses the head at the start of `buffer`'s readable bytes (nothing is consumed).
    static func parse(_ buffer: ByteBuffer, maxHeaderBytes: Int, maxHeaderFields: Int) -> Outcome {
        buffer.withUnsafeReadableBytes { bytes in
            parse(bytes, maxHeaderBytes: maxHeaderBytes, maxHeaderFields: maxHeaderFields)
        }
    }

    static func parse(_ bytes: UnsafeRawBufferPointer, maxHeaderBytes: Int, maxHeaderFields: Int) -> Outcome {
        // The request line: `GET ` or `HEAD `, the target, ` HTTP/1.1` CRLF.
        let method: HTTPMethod
        var index: Int
        if matches(bytes, at: 0, "GET ") {
            (method, index) = (.GET, 4)
        } else if matches(bytes, at: 0, "POST ") {
            (method, index) = (.POST, 5)
        } else if matches(bytes, at: 0, "HEAD ") {
            (method, index) = (.HEAD, 5)
        } else if matches(bytes, at: 0, "PUT ") {
            (method, index) = (.PUT, 4)
        } else if matches(bytes, at: 0, "PATCH ") {
            (method, index) = (.PATCH, 6)
        } else if matches(bytes, at: 0, "DELETE ") {
            (method, index) = (.DELETE, 7)
        } else {
            // A prefix of one of them may still become it.
            if bytes.count < 7, isPrefix(bytes, of: "GET ") || isPrefix(bytes, of: "POST ") || isPrefix(bytes, of: "HEAD ")
                || isPrefix(bytes, of: "PUT ") || isPrefix(bytes, of: "PATCH ") || isPrefix(bytes, of: "DELETE ") {
                return .incomplete
            }
            return .unsupported("method")
        }
        let targetStart = index
        // The head may not be in the buffer yet; its limit counts from the first byte.
        let limit = min(bytes.count, maxHeaderBytes + 4)
        while index < limit, bytes[index] != UInt8(ascii: " ") {
            // Visible ASCII only: no controls, no spaces, no obs-text.
            guard bytes[index] > 0x20, bytes[index] < 0x7F else { return .unsupported("target byte") }
            index += 1
        }
        guard index < limit else { return bytes.count > maxHeaderBytes ? .unsupported("head too large") : .incomplete }
        let targetEnd = index
        guard targetEnd > targetStart, bytes[targetStart] == UInt8(ascii: "/") else { return .unsupported("target form") }
        let version: StaticString = " HTTP/1.1\r\n"
        guard bytes.count >= index + version.utf8CodeUnitCount else {
            return isPrefix(UnsafeRawBufferPointer(rebasing: bytes[index...]), of: version) ? .incomplete : .unsupported("version")
        }
        guard matches(bytes, at: index, version) else { return .unsupported("version") }
        index += version.utf8CodeUnitCount
        // Collected as pairs and made into `HTTPHeaders` once: `add` scans every name for
        // non-ASCII bytes, which the token check here has ruled out already.
        var fieldList: [(String, String)] = []
        fieldList.reserveCapacity(8)
        // The full stack's measure of the head (``ProxyHeaders/exceedsLimits``): the target,
        // and each field's name and value plus 4. A head over it goes there, for its 431.
        var counted = targetEnd - targetStart
        var hosts = 0
        var bodyLength: Int?
        var keepAlive = true
        var fields = 0
        while true {
            guard index + 1 < limit else { return bytes.count > maxHeaderBytes ? .unsupported("head too large") : .incomplete }
            if bytes[index] == UInt8(ascii: "\r") {
                guard bytes[index + 1] == UInt8(ascii: "\n") else { return .unsupported("bare CR") }
                index += 2
                break
            }
            fields += 1
            guard fields <= maxHeaderFields else { return .unsupported("too many fields") }
            let nameStart = index
            while index < limit, isTokenByte(bytes[index]) { index += 1 }
            guard index < limit else { return bytes.count > maxHeaderBytes ? .unsupported("head too large") : .incomplete }
            // No space before the colon (RFC 9112 §5.1), no empty name.
            guard index > nameStart, bytes[index] == UInt8(ascii: ":") else { return .unsupported("field name") }
            let name = UnsafeRawBufferPointer(rebasing: bytes[nameStart..<index])
            index += 1
            while index < limit, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
            let valueStart = index
            while index < limit, bytes[index] != UInt8(ascii: "\r") {
                let byte = bytes[index]
                guard (byte >= 0x20 && byte < 0x7F) || byte == 0x09 else { return .unsupported("field value byte") }
                index += 1
            }
            guard index + 1 < limit else { return bytes.count > maxHeaderBytes ? .unsupported("head too large") : .incomplete }
            guard bytes[index + 1] == UInt8(ascii: "\n") else { return .unsupported("bare CR") }
            // Trailing spaces stay part of the value, as llhttp keeps them (the full stack
            // forwards them too); tokens are trimmed where they are compared.
            let value = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<index])
            index += 2
            counted += name.count + value.count + 4
            guard counted <= maxHeaderBytes else { return .unsupported("head too large") }
            switch classify(name) {
            case .host:
                hosts += 1
            case .connection:
                // Only the two tokens that say nothing but whether the connection stays open.
                // No tab: NIO's keep-alive reading trims spaces only, and takes `close<TAB>`
                // for another token.
                if value.contains(0x09) { return .unsupported("connection option") }
                var other = false
                var close = false
                forEachToken(value) { token in
                    if equalsLowercase(token, "close") { close = true } else if !equalsLowercase(token, "keep-alive") { other = true }
                }
                if other { return .unsupported("connection option") }
                if close { keepAlive = false }
            case .contentLength:
                // Digits only, once, and small. Not even trailing whitespace: llhttp takes a
                // space there but refuses a tab, and the full stack reads both the way it does.
                let digits = value.count
                guard bodyLength == nil, digits > 0, digits <= 6 else { return .unsupported("content-length") }
                var length = 0
                for offset in 0..<digits {
                    let byte = value[offset]
                    guard byte >= 0x30, byte <= 0x39 else { return .unsupported("content-length") }
                    length = length * 10 + Int(byte - 0x30)
                }
                guard length <= maxBodyBytes else { return .unsupported("body too large") }
                bodyLength = length
            case .framing:
                return .unsupported("framing or upgrade field")
            case .other:
                break
            }
            fieldList.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        guard hosts == 1 else { return .unsupported("host count") }
        guard index <= maxHeaderBytes else { return .unsupported("head too large") }
        let target = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[targetStart..<targetEnd]), as: UTF8.self)
        return .request(HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: HTTPHeaders(fieldList)),
                        length: index, keepAlive: keepAlive, bodyLength: bodyLength ?? 0)
    }

    private enum FieldKind { case host, connection, contentLength, framing, other }

    /// The fields the express path looks at, by lowercase name.
    private static func classify(_ name: UnsafeRawBufferPointer) -> FieldKind {
        switch name.count {
        case 2: return equalsLowercase(name, "te") ? .framing : .other
        case 4: return equalsLowercase(name, "host") ? .host : .other
        case 6: return equalsLowercase(name, "expect") ? .framing : .other
        case 7: return equalsLowercase(name, "upgrade") || equalsLowercase(name, "trailer") ? .framing : .other
        case 10:
            if equalsLowercase(name, "connection") { return .connection }
            return equalsLowercase(name, "keep-alive") ? .framing : .other
        case 14:
            if equalsLowercase(name, "content-length") { return .contentLength }
            return equalsLowercase(name, "http2-settings") ? .framing : .other
        case 16: return equalsLowercase(name, "proxy-connection") ? .framing : .other
        case 17: return equalsLowercase(name, "transfer-encoding") || equalsLowercase(name, "x-mesh-orig-proto") ? .framing : .other
        default: return .other
        }
    }

    /// RFC 9110 `tchar`: ALPHA, DIGIT and ``!#$%&'*+-.^_`|~``, as two bit masks (bytes 0–63
    /// and 64–127; a test per byte instead of a chain of comparisons).
    @inline(__always)
    static func isTokenByte(_ byte: UInt8) -> Bool {
        if byte < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) >> byte & 1 == 1 }
        if byte < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) >> (byte - 64) & 1 == 1 }
        return false
    }

    /// Whether `bytes` holds `literal` at `offset` (in full).
    @inline(__always)
    static func matches(_ bytes: UnsafeRawBufferPointer, at offset: Int, _ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard bytes.count - offset >= count else { return false }
        let expected = literal.utf8Start
        for i in 0..<count where bytes[offset + i] != expected[i] { return false }
        return true
    }

    /// Whether all of `bytes` is the start of `literal`.
    static func isPrefix(_ bytes: UnsafeRawBufferPointer, of literal: StaticString) -> Bool {
        guard bytes.count <= literal.utf8CodeUnitCount else { return false }
        let expected = literal.utf8Start
        for i in 0..<bytes.count where bytes[i] != expected[i] { return false }
        return true
    }

    /// ASCII case-insensitive equality with a lowercase name.
    ///
    /// Eight bytes at a time from eight on (the last word overlaps the one before it): byte by
    /// byte, the names and tokens a head is classified by took ~6 instructions a byte.
    static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ lowercase: StaticString) -> Bool {
        let count = bytes.count
        guard count == lowercase.utf8CodeUnitCount else { return false }
        let expected = UnsafeRawPointer(lowercase.utf8Start)
        guard count >= 8 else {
            for i in 0..<count {
                let byte = bytes[i]
                let folded = byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
                if folded != expected.load(fromByteOffset: i, as: UInt8.self) { return false }
            }
            return true
        }
        var offset = 0
        while true {
            let word = bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            if lowercased(word) != expected.loadUnaligned(fromByteOffset: offset, as: UInt64.self) { return false }
            if offset == count - 8 { return true }
            offset = min(offset + 8, count - 8)
        }
    }

    /// `word`'s eight bytes with ASCII `A`–`Z` lowercased and every other byte as it is.
    @inline(__always)
    static func lowercased(_ word: UInt64) -> UInt64 {
        let low7 = word & 0x7F7F_7F7F_7F7F_7F7F
        // Per byte (no carries: each sum stays below 0x100): the high bit of `low7 + 0x3F` is
        // set from `A` (0x41) up, that of `low7 + 0x25` from `[` (0x5B) up; bytes from 0x80
        // up are ruled out by `~word`.
        let upper = (low7 &+ 0x3F3F_3F3F_3F3F_3F3F) & ~(low7 &+ 0x2525_2525_2525_2525) & ~word & 0x8080_8080_8080_8080
        return word | (upper >> 2)
    }

    /// Calls `body` with each comma-separated token of a value, without spaces around it.
    static func forEachToken(_ value: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        while start <= value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            var lower = start
            var upper = end
            while lower < upper, value[lower] == 0x20 || value[lower] == 0x09 { lower += 1 }
            while upper > lower, value[upper - 1] == 0x20 || value[upper - 1] == 0x09 { upper -= 1 }
            if upper > lower { body(UnsafeRawBufferPointer(rebasing: value[lower..<upper])) }
            start = end + 1
        }
    }
}
