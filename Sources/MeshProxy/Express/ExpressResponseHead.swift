import NIOCore

/// Reads a response head from an upstream on the express path (``ExpressUpstream``) and
/// writes the head the caller gets, copying the upstream's fields as bytes.
///
/// What the caller gets is what the full HTTP stack sends for the same response: an
/// `HTTP/1.1` status line with the upstream's code and reason, the upstream's fields without
/// the hop-by-hop ones (RFC 9110 §7.6.1, and those named in `Connection`) and without
/// `x-mesh-timing`, then the fields this proxy adds. The body keeps its framing
/// (``Framing``); a body delimited by the connection's close goes on chunked, as NIO's encoder
/// would send it, so the caller's connection stays open.
enum ExpressResponseHead {
    /// How the response body is delimited (RFC 9112 §6.3).
    enum Framing: Equatable {
        /// No body: `HEAD`, 1xx, 204, 304, or `Content-Length: 0`.
        case none
        case length(Int)
        /// `Transfer-Encoding: chunked`: passed on as it comes (``ChunkedBody`` finds its end).
        case chunked
        /// Neither: the body ends when the upstream closes.
        case untilClose
    }

    struct Parsed {
        var status: Int
        /// Bytes of the head, final CRLF included.
        var length: Int
        var framing: Framing
        /// The upstream keeps the connection open after this response.
        var keepAlive: Bool
        /// Where the peer proxy's `x-mesh-timing` value (the first one) is in the head, when
        /// asked for. Offsets rather than a string: `Parsed` holds no reference, so handing it
        /// on copies a few words (a string made it a value to retain and release, and its
        /// copies went through outlined value witnesses: ~1k instructions a response).
        var timing: Range<Int>?
        /// `Connection` names fields besides `close` and `keep-alive`: they are dropped too.
        var connectionNamesFields: Bool
        /// Where the status line's CR is.
        var statusLineEnd: Int
        /// The field lines the caller does not get (hop-by-hop, `x-mesh-timing`), found by the
        /// parse so that the write copies the lines between them without reading them again.
        var dropped = DroppedLines()
    }

    /// The first few dropped field lines of a head, each from its name to its CRLF (a head
    /// rarely has more than two: `Connection` and `Keep-Alive`, or the peer's timing report).
    struct DroppedLines {
        static let capacity = 4
        private(set) var count = 0
        private var lines: (Range<Int>, Range<Int>, Range<Int>, Range<Int>) = (0..<0, 0..<0, 0..<0, 0..<0)

        /// More were dropped than are kept here: the write walks the fields instead.
        var overflowed: Bool { count > Self.capacity }

        mutating func append(_ line: Range<Int>) {
            switch count {
            case 0: lines.0 = line
            case 1: lines.1 = line
            case 2: lines.2 = line
            case 3: lines.3 = line
            default: break
            }
            count += 1
        }

        subscript(index: Int) -> Range<Int> {
            switch index {
            case 0: lines.0
            case 1: lines.1
            case 2: lines.2
            default: lines.3
            }
        }
    }

    enum Outcome {
        case incomplete
        /// The upstream's head cannot be read, or frames its body in a way a proxy must not
        /// pass on (the reason goes to the log and to the caller's 502).
        case invalid(StaticString)
        case parsed(Parsed)
    }

    /// Parses the head at the start of `bytes`. `requestWasHead`: the answer to a `HEAD` has
    /// no body whatever its fields say.
    static func parse(_ bytes: UnsafeRawBufferPointer, requestWasHead: Bool, maxBytes: Int, wantsTiming: Bool) -> Outcome {
        let limit = min(bytes.count, maxBytes)
        // `HTTP/1.x NNN reason` CRLF.
        let prefix = 13
        guard limit >= prefix else {
            return bytes.count >= maxBytes ? .invalid("response head too large") : .incomplete
        }
        guard ExpressRequestHead.matches(bytes, at: 0, "HTTP/1."), bytes[7] == UInt8(ascii: "1") || bytes[7] == UInt8(ascii: "0"),
              bytes[8] == UInt8(ascii: " "), isDigit(bytes[9]), isDigit(bytes[10]), isDigit(bytes[11]) else {
            return .invalid("not an HTTP/1.x status line")
        }
        let http10 = bytes[7] == UInt8(ascii: "0")
        let status = Int(bytes[9] - 0x30) * 100 + Int(bytes[10] - 0x30) * 10 + Int(bytes[11] - 0x30)
        guard status >= 100 else { return .invalid("status code below 100") }
        var index = 12
        guard bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\r") else { return .invalid("status line") }
        guard let reasonEnd = fieldTextEnd(bytes, from: index, limit: limit) else {
            return .invalid("control byte in the reason phrase")
        }
        index = reasonEnd
        var dropped = DroppedLines()
        var length: Int?
        var chunked = false
        var otherCoding = false
        var close = false
        var keepAliveToken = false
        var timing: Range<Int>?
        var namesFields = false
        while true {
            guard index + 1 < limit else { return bytes.count >= maxBytes ? .invalid("response head too large") : .incomplete }
            guard bytes[index] == UInt8(ascii: "\r"), bytes[index + 1] == UInt8(ascii: "\n") else { return .invalid("bare CR or LF") }
            index += 2
            guard index + 1 < limit else { return bytes.count >= maxBytes ? .invalid("response head too large") : .incomplete }
            if bytes[index] == UInt8(ascii: "\r") {
                guard bytes[index + 1] == UInt8(ascii: "\n") else { return .invalid("bare CR") }
                index += 2
                break
            }
            let nameStart = index
            while index < limit, ExpressRequestHead.isTokenByte(bytes[index]) { index += 1 }
            guard index < limit else { return bytes.count >= maxBytes ? .invalid("response head too large") : .incomplete }
            guard index > nameStart, bytes[index] == UInt8(ascii: ":") else { return .invalid("malformed field name") }
            let name = UnsafeRawBufferPointer(rebasing: bytes[nameStart..<index])
            index += 1
            while index < limit, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
            let valueStart = index
            guard let valueEnd = fieldTextEnd(bytes, from: index, limit: limit) else { return .invalid("control byte in a field value") }
            index = valueEnd
            var trimmedEnd = index
            while trimmedEnd > valueStart, bytes[trimmedEnd - 1] == 0x20 || bytes[trimmedEnd - 1] == 0x09 { trimmedEnd -= 1 }
            let value = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<trimmedEnd])
            // One classification per field, for both what it says and whether it is dropped.
            switch classify(name) {
            case .connection:
                dropped.append(nameStart..<(index + 2))
                ExpressRequestHead.forEachToken(value) { token in
                    if ExpressRequestHead.equalsLowercase(token, "close") {
                        close = true
                    } else if ExpressRequestHead.equalsLowercase(token, "keep-alive") {
                        keepAliveToken = true
                    } else {
                        namesFields = true
                    }
                }
            case .contentLength:
                guard let parsed = parseLength(value) else { return .invalid("invalid Content-Length") }
                // Once: llhttp (the full stack) refuses a repeated one too, even when equal.
                guard length == nil else { return .invalid("repeated Content-Length") }
                length = parsed
            case .transferEncoding:
                var tokens = 0
                var isChunked = false
                ExpressRequestHead.forEachToken(value) { token in
                    tokens += 1
                    isChunked = ExpressRequestHead.equalsLowercase(token, "chunked")
                }
                if tokens == 1, isChunked, !chunked { chunked = true } else { otherCoding = true }
            case .timing:
                dropped.append(nameStart..<(index + 2))
                if wantsTiming && timing == nil { timing = valueStart..<trimmedEnd }
            case .otherDropped:
                dropped.append(nameStart..<(index + 2))
            case .other:
                break
            }
        }
        // Chunked exactly once and alone: anything else is a framing a proxy cannot vouch for.
        if otherCoding { return .invalid("Transfer-Encoding other than a single 'chunked'") }
        if chunked && length != nil { return .invalid("both Transfer-Encoding and Content-Length") }
        let framing: Framing
        if requestWasHead || status < 200 || status == 204 || status == 304 {
            framing = .none
        } else if chunked {
            framing = .chunked
        } else if let length {
            framing = length == 0 ? .none : .length(length)
        } else {
            framing = .untilClose
        }
        let keepAlive = !close && (!http10 || keepAliveToken) && framing != .untilClose
        return .parsed(Parsed(status: status, length: index, framing: framing, keepAlive: keepAlive, timing: timing,
                              connectionNamesFields: namesFields, statusLineEnd: reasonEnd, dropped: dropped))
    }

    /// Writes the caller's head: `HTTP/1.1`, the status and reason, every field of `bytes`'
    /// head but the hop-by-hop ones and `x-mesh-timing`, `transfer-encoding: chunked` for a
    /// body that ends with the upstream's close, then this proxy's `timing` report; then
    /// `body`, bytes of body sent in the same write.
    static func write(_ bytes: UnsafeRawBufferPointer, _ parsed: Parsed, timing: HopTiming?, close: Bool,
                      body: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0), into out: inout ByteBuffer) {
        let named = parsed.connectionNamesFields ? connectionTokens(bytes, end: parsed.length) : []
        out.writeHead(capacity: maxWrittenBytes(parsed) + body.count) { out in
            out.append("HTTP/1.1")
            // From the space after the version to the end of the first line.
            let statusEnd = parsed.statusLineEnd
            out.append(UnsafeRawBufferPointer(rebasing: bytes[8..<statusEnd]))
            out.append("\r\n")
            if named.isEmpty, !parsed.dropped.overflowed {
                // The lines between the dropped ones, each run in one copy.
                var from = statusEnd + 2
                for index in 0..<parsed.dropped.count {
                    let line = parsed.dropped[index]
                    out.append(UnsafeRawBufferPointer(rebasing: bytes[from..<line.lowerBound]))
                    from = line.upperBound
                }
                out.append(UnsafeRawBufferPointer(rebasing: bytes[from..<(parsed.length - 2)]))
            } else {
                forEachField(bytes, from: statusEnd + 2, end: parsed.length) { start, colon, lineEnd in
                    let name = UnsafeRawBufferPointer(rebasing: bytes[start..<colon])
                    if isDropped(name) { return }
                    if !named.isEmpty, named.contains(where: { name.count == $0.count && zip(name, $0).allSatisfy { lower($0) == $1 } }) {
                        return
                    }
                    out.append(UnsafeRawBufferPointer(rebasing: bytes[start..<(lineEnd + 2)]))
                }
            }
            if parsed.framing == .untilClose { out.append("transfer-encoding: chunked\r\n") }
            timing?.writeField(into: &out)
            if close { out.append("connection: close\r\n") }
            out.append("\r\n")
            out.append(body)
        }
    }

    /// The most ``write(_:_:timing:close:into:)`` writes for a head: the head without dropped
    /// lines is never longer than the one read; then the transfer coding, the timing field and
    /// `connection: close`.
    static func maxWrittenBytes(_ parsed: Parsed) -> Int {
        parsed.length + 28 + HopTiming.maxFieldBytes + 19
    }

    /// The index of the CR that ends the line `index` is in.
    private static func lineEnd(_ bytes: UnsafeRawBufferPointer, from index: Int) -> Int {
        var end = index
        while bytes[end] != UInt8(ascii: "\r") { end += 1 }
        return end
    }

    /// Calls `body` with each field line of a head that ``parse(_:requestWasHead:maxBytes:wantsTiming:)``
    /// accepted (`end`: its length), from the line starting at `index`: where the line starts,
    /// where its colon is and where its CR is.
    private static func forEachField(_ bytes: UnsafeRawBufferPointer, from index: Int, end: Int,
                                     _ body: (_ start: Int, _ colon: Int, _ lineEnd: Int) -> Void) {
        var index = index
        while index < end - 2 {
            var colon = index
            while bytes[colon] != UInt8(ascii: ":") { colon += 1 }
            let lineEnd = lineEnd(bytes, from: colon)
            body(index, colon, lineEnd)
            index = lineEnd + 2
        }
    }

    /// The fields of a response head the parse acts on.
    private enum FieldKind {
        case connection, contentLength, transferEncoding
        /// `x-mesh-timing`: read (outbound) and dropped.
        case timing
        /// The other hop-by-hop fields (those the full stack strips, ``ProxyHeaders/hopByHop``).
        case otherDropped
        case other
    }

    private static func classify(_ name: UnsafeRawBufferPointer) -> FieldKind {
        switch name.count {
        case 7: return ExpressRequestHead.equalsLowercase(name, "upgrade") ? .otherDropped : .other
        case 10:
            if ExpressRequestHead.equalsLowercase(name, "connection") { return .connection }
            return ExpressRequestHead.equalsLowercase(name, "keep-alive") ? .otherDropped : .other
        case 13: return ExpressRequestHead.equalsLowercase(name, "x-mesh-timing") ? .timing : .other
        case 14: return ExpressRequestHead.equalsLowercase(name, "content-length") ? .contentLength : .other
        case 16: return ExpressRequestHead.equalsLowercase(name, "proxy-connection") ? .otherDropped : .other
        case 17: return ExpressRequestHead.equalsLowercase(name, "transfer-encoding") ? .transferEncoding : .other
        case 18: return ExpressRequestHead.equalsLowercase(name, "proxy-authenticate") ? .otherDropped : .other
        default: return .other
        }
    }

    /// Hop-by-hop fields and the timing report between proxies: the caller does not get them.
    private static func isDropped(_ name: UnsafeRawBufferPointer) -> Bool {
        switch classify(name) {
        case .connection, .timing, .otherDropped: return true
        case .contentLength, .transferEncoding, .other: return false
        }
    }

    /// The lowercase field names a `Connection` field lists (besides `close`, `keep-alive`).
    private static func connectionTokens(_ bytes: UnsafeRawBufferPointer, end: Int) -> [[UInt8]] {
        var tokens: [[UInt8]] = []
        forEachField(bytes, from: lineEnd(bytes, from: 0) + 2, end: end) { start, colon, lineEnd in
            guard ExpressRequestHead.equalsLowercase(UnsafeRawBufferPointer(rebasing: bytes[start..<colon]), "connection") else { return }
            ExpressRequestHead.forEachToken(UnsafeRawBufferPointer(rebasing: bytes[(colon + 1)..<lineEnd])) { token in
                // The framing fields stay whatever `Connection` says: the body is passed on as
                // it is framed, and without them the caller could not find its end.
                for kept in ["close", "keep-alive", "content-length", "transfer-encoding"] where token.count == kept.utf8.count
                    && zip(token, kept.utf8).allSatisfy({ lower($0) == $1 }) {
                    return
                }
                tokens.append(token.map(lower))
            }
        }
        return tokens
    }

    /// Where the text of a reason phrase or field value that starts at `start` ends: the index
    /// of its CR, or `limit` when the bytes run out first; nil at a byte no such text may hold
    /// (visible characters, spaces, tabs and obs-text only: no other control and no DEL).
    ///
    /// Eight bytes at a time while none of them is a control byte (CR and tab are ones too) or
    /// DEL, then byte by byte: byte by byte alone, values took 13 instructions a byte, a third
    /// of a response head's parse.
    static func fieldTextEnd(_ bytes: UnsafeRawBufferPointer, from start: Int, limit: Int) -> Int? {
        var index = start
        while index + 8 <= limit {
            let word = bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            // A byte's high bit is set where it is below 0x20 (borrows only run on from a byte
            // that is, so whether any is flagged is exact; bytes from 0x80 up are never flagged).
            let controls = (word &- 0x2020_2020_2020_2020) & ~word & 0x8080_8080_8080_8080
            let flipped = word ^ 0x7F7F_7F7F_7F7F_7F7F // DEL becomes zero
            let deletes = (flipped &- 0x0101_0101_0101_0101) & ~flipped & 0x8080_8080_8080_8080
            if controls | deletes != 0 { break }
            index += 8
        }
        while index < limit {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\r") { return index }
            guard byte >= 0x20 && byte != 0x7F || byte == 0x09 else { return nil }
            index += 1
        }
        return limit
    }

    private static func lower(_ byte: UInt8) -> UInt8 { byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    /// Digits only, at most 18 of them (no sign, no spaces, no list).
    private static func parseLength(_ value: UnsafeRawBufferPointer) -> Int? {
        guard !value.isEmpty, value.count <= 18 else { return nil }
        var result = 0
        for byte in value {
            guard isDigit(byte) else { return nil }
            result = result * 10 + Int(byte - 0x30)
        }
        return result
    }
}
