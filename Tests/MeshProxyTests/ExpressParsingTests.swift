@testable import MeshProxy
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

/// The express path reads request and response heads itself. What it accepts it must read
/// exactly as NIO's llhttp decoder (the full stack) does, and everything it is unsure of it
/// must leave to the full stack: two parsers that disagree on the same bytes are how requests
/// get smuggled past a proxy's checks.
final class ExpressParsingTests: XCTestCase {
    private func parse(_ text: String, maxBytes: Int = 60 * 1024, maxFields: Int = 100) -> ExpressRequestHead.Outcome {
        ExpressRequestHead.parse(ByteBuffer(string: text), maxHeaderBytes: maxBytes, maxHeaderFields: maxFields)
    }

    /// NIO's decoder on the same bytes: the head it reads and the length of the body after it
    /// (nil until the request ends), or nil when it refuses them.
    private func nioRequest(_ text: String) throws -> (head: HTTPRequestHead, bodyLength: Int?)? {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
        defer { _ = try? channel.finish() }
        do {
            try channel.writeInbound(ByteBuffer(string: text))
        } catch {
            return nil
        }
        guard case .head(let head)? = try channel.readInbound(as: HTTPServerRequestPart.self) else { return nil }
        var body = 0
        while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
            switch part {
            case .head: break
            case .body(let chunk): body += chunk.readableBytes
            case .end: return (head, body)
            }
        }
        return (head, nil)
    }

    func testSimpleRequestsAreReadAsNIOReadsThem() throws {
        let requests = [
            "GET / HTTP/1.1\r\nHost: api\r\n\r\n",
            "HEAD /a/b?x=1&y=%20 HTTP/1.1\r\nhost: api:8080\r\nAccept: */*\r\nUser-Agent: curl/8\r\n\r\n",
            "GET /p HTTP/1.1\r\nHost:api\r\nX-Empty:\r\nX-Spaces:   padded value \t \r\nConnection: keep-alive\r\n\r\n",
            "GET /p HTTP/1.1\r\nHOST: api\r\nx-a: 1\r\nX-A: 2\r\nCONNECTION: Close\r\n\r\n",
            "GET /~!$&'()*+,;=:@ HTTP/1.1\r\nHost: api\r\nx-mesh-peer-identity: spiffe://evil/ns/x/sa/y\r\n\r\n",
            "POST /v1/orders HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\": 12345}",
            "PUT /k HTTP/1.1\r\ncontent-length: 005\r\nHost: api\r\n\r\nhello",
            "PATCH /k HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            "DELETE /k HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n",
        ]
        for text in requests {
            guard case .request(let head, let length, let keepAlive, let bodyLength) = parse(text) else {
                XCTFail("not accepted: \(text.debugDescription)")
                continue
            }
            XCTAssertEqual(length + bodyLength, text.utf8.count, text.debugDescription)
            let (reference, nioBodyLength) = try XCTUnwrap(try nioRequest(text), text.debugDescription)
            XCTAssertEqual(bodyLength, nioBodyLength, "the body as llhttp delimits it: \(text.debugDescription)")
            XCTAssertEqual(head.method, reference.method)
            XCTAssertEqual(head.uri, reference.uri)
            XCTAssertEqual(head.version, reference.version)
            XCTAssertEqual(head.headers.map { "\($0.name)=\($0.value)" }, reference.headers.map { "\($0.name)=\($0.value)" },
                           text.debugDescription)
            XCTAssertEqual(keepAlive, reference.isKeepAlive, text.debugDescription)
        }
    }

    /// 20,000 mutations of real requests (bytes inserted, replaced or removed from those that
    /// matter to a parser: CR, LF, spaces, tabs, colons, NUL, DEL, obs-text, commas, slashes,
    /// percent signs), each followed by a second request: whenever the express parser accepts
    /// one, NIO's decoder must read the same head and find the second request right where the
    /// express parser said the first one ended. A differential here is a smuggling bug.
    func testGeneratedRequestsAreNeverReadDifferentlyThanNIOReadsThem() throws {
        let seeds = ["GET / HTTP/1.1\r\nHost: api\r\n\r\n",
                     "HEAD /a/b?c=d HTTP/1.1\r\nHost: api:80\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                     "GET /x HTTP/1.1\r\nhost: api\r\nX-A: 1, 2\r\nConnection: keep-alive\r\nUser-Agent: t\r\n\r\n",
                     "POST /o HTTP/1.1\r\nHost: api\r\nContent-Length: 11\r\n\r\n{\"a\":\"b:c\"}",
                     "PUT /k HTTP/1.1\r\nContent-Length: 3\r\nHost: api\r\nConnection: close\r\n\r\nx\r\n"]
        let pieces: [UInt8] = [0x0D, 0x0A, 0x20, 0x09, 0x3A, 0x00, 0x7F, 0x80, 0xFF, 0x2C, 0x2F, 0x25, 0x61, 0x48]
        let next = "GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
        var random = FastRandom(seed: 0x5EED)
        var accepted = 0
        for round in 0..<20_000 {
            var bytes = Array(seeds[round % seeds.count].utf8)
            for _ in 0..<(1 + random.below(3)) {
                let at = random.below(bytes.count)
                switch random.below(3) {
                case 0: bytes.insert(pieces[random.below(pieces.count)], at: at)
                case 1: bytes[at] = pieces[random.below(pieces.count)]
                default: if bytes.count > 1 { bytes.remove(at: at) }
                }
            }
            guard case .request(let head, let length, let keepAlive, let bodyLength) = ExpressRequestHead.parse(
                ByteBuffer(bytes: bytes), maxHeaderBytes: 60 * 1024, maxHeaderFields: 100) else { continue }
            // A body cut short by the mutation: the express path waits for the rest.
            guard bytes.count >= length + bodyLength else { continue }
            accepted += 1
            // The request as the express path delimited it, head and body (a mutation past its
            // end belongs to whatever comes next), then a second request.
            var buffer = ByteBuffer(bytes: bytes[..<(length + bodyLength)])
            // After `Connection: close` nothing may follow (llhttp refuses it, the express path
            // drops it).
            if keepAlive { buffer.writeString(next) }
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
            defer { _ = try? channel.finish() }
            XCTAssertNoThrow(try channel.writeInbound(buffer), "NIO refuses what the express path took: \(bytes)")
            var heads: [HTTPRequestHead] = []
            var bodies: [Int] = []
            while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let head): heads.append(head); bodies.append(0)
                case .body(let chunk): bodies[bodies.count - 1] += chunk.readableBytes
                case .end: break
                }
            }
            XCTAssertEqual(bodies.first, bodyLength, "NIO reads another body than the express path: \(bytes)")
            XCTAssertEqual(heads.count, keepAlive ? 2 : 1, "NIO does not see the request boundary the express path saw: \(bytes)")
            XCTAssertEqual(heads.first?.isKeepAlive, keepAlive, "\(bytes)")
            guard let first = heads.first else { continue }
            XCTAssertEqual(first.method, head.method)
            XCTAssertEqual(first.uri, head.uri, "\(bytes)")
            XCTAssertEqual(first.headers.map { "\($0.name)=\($0.value)" }, head.headers.map { "\($0.name)=\($0.value)" }, "\(bytes)")
            if keepAlive { XCTAssertEqual(heads.last?.uri, "/next") }
        }
        XCTAssertGreaterThan(accepted, 1000, "the mutations should leave many requests acceptable")
    }

    func testAnythingUnusualGoesToTheFullStack() {
        let unsupported = [
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 16385\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5, 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5 \r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\t\r\n\r\nhello",
            "GET / HTTP/1.1\r\nHost: api\r\nConnection: close\t\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            "CONNECT api:443 HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nKeep-Alive: timeout=5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nx-mesh-orig-proto: HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: api\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: api\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: api\n\n",
            "GET / HTTP/1.1\r\nHost: api\nX: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : api\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nX-Nul: a\u{0}b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nX-CR: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api\r\nX-Utf8: caf\u{e9}\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET http://api/ HTTP/1.1\r\nHost: api\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: api\r\n\r\n",
            "get / HTTP/1.1\r\nHost: api\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: api\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty-name\r\nHost: api\r\n\r\n",
        ]
        for text in unsupported {
            guard case .unsupported = parse(text) else {
                XCTFail("accepted: \(text.debugDescription)")
                continue
            }
        }
    }

    func testTokenBytesAreExactlyRFC9110s() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in UInt8.min...UInt8.max {
            XCTAssertEqual(ExpressRequestHead.isTokenByte(byte), tchar.contains(byte), "byte \(byte)")
        }
    }

    /// Names and tokens are compared with the literals eight bytes at a time: every byte
    /// must fold as the byte-by-byte rule folds it (`A`–`Z` only), including the bytes just
    /// outside the letters (`@`, `[`, `` ` ``, `{`), bytes from 0x80 up, and every length.
    func testNamesCompareCaseInsensitivelyAsTheByteByByteRuleDoes() {
        let literals: [StaticString] = ["te", "host", "close", "expect", "upgrade", "chunked", "connection", "keep-alive",
                                        "x-mesh-timing", "content-length", "http2-settings", "proxy-connection",
                                        "transfer-encoding", "proxy-authenticate"]
        func reference(_ bytes: [UInt8], _ literal: StaticString) -> Bool {
            let expected = UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount)
            return bytes.count == expected.count
                && zip(bytes, expected).allSatisfy { ($0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0) == $1 }
        }
        let near: [UInt8] = [0x40, 0x5B, 0x60, 0x7B, 0x0D, 0x20, 0x7F, 0x80, 0xC1, 0xDA, 0xFF, 0x00]
        var random = FastRandom(seed: 0x10CA5E)
        var equal = 0
        for _ in 0..<50_000 {
            let literal = literals[random.below(literals.count)]
            var bytes = Array(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
            for i in bytes.indices where random.below(2) == 0 && bytes[i] >= 0x61 { bytes[i] -= 0x20 }
            switch random.below(4) {
            case 0: bytes[random.below(bytes.count)] = near[random.below(near.count)]
            case 1: bytes[random.below(bytes.count)] ^= UInt8(1 << random.below(8))
            case 2 where random.below(2) == 0: bytes.append(0x61)
            default: break
            }
            let expected = reference(bytes, literal)
            XCTAssertEqual(bytes.withUnsafeBytes { ExpressRequestHead.equalsLowercase($0, literal) }, expected, "\(bytes) vs \(literal)")
            if expected { equal += 1 }
        }
        XCTAssertGreaterThan(equal, 10_000, "the cases should include many equal names")
        XCTAssertLessThan(equal, 40_000, "the cases should include many names that differ")
    }

    func testLimitsAreLeftToTheFullStackWhichAnswers431() {
        let fields = (0..<5).map { "x-\($0): v\r\n" }.joined()
        let text = "GET / HTTP/1.1\r\nHost: api\r\n" + fields + "\r\n"
        guard case .request = parse(text, maxFields: 6) else { return XCTFail("6 fields are within a limit of 6") }
        guard case .unsupported = parse(text, maxFields: 5) else { return XCTFail("6 fields are over a limit of 5") }
        // Measured as the full stack measures it (target, and name + value + 4 per field),
        // whatever the spacing: a head it would refuse is never forwarded from here.
        let tight = "GET /abc HTTP/1.1\r\nHost:api\r\n" + (0..<30).map { "x\($0 % 10):v\r\n" }.joined() + "\r\n"
        let measured = 4 + (4 + 3 + 4) + 30 * (2 + 1 + 4)
        guard case .request = parse(tight, maxBytes: measured) else { return XCTFail("at the full stack's limit") }
        guard case .unsupported = parse(tight, maxBytes: measured - 1) else { return XCTFail("over the full stack's limit") }
        let big = "GET / HTTP/1.1\r\nHost: api\r\nx-big: \(String(repeating: "a", count: 2000))\r\n\r\n"
        guard case .unsupported = parse(big, maxBytes: 1024) else { return XCTFail("over the byte limit") }
        // A head that never ends is not waited for beyond the limit.
        let endless = "GET / HTTP/1.1\r\nHost: api\r\nx-big: " + String(repeating: "a", count: 2000)
        guard case .unsupported = parse(endless, maxBytes: 1024) else { return XCTFail("an endless head is waited for") }
    }

    func testEveryPrefixOfAHeadIsIncomplete() {
        for text in ["HEAD /path?q=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n",
                     "DELETE /k HTTP/1.1\r\nHost: api\r\n\r\n", "PATCH /k HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\n"] {
            let bytes = Array(text.utf8)
            for cut in 1..<bytes.count {
                var buffer = ByteBuffer()
                buffer.writeBytes(bytes[..<cut])
                guard case .incomplete = ExpressRequestHead.parse(buffer, maxHeaderBytes: 1024, maxHeaderFields: 100) else {
                    return XCTFail("prefix of \(cut) bytes of \(text.debugDescription): not incomplete")
                }
            }
        }
    }

    // MARK: - Responses

    private func parseResponse(_ text: String, head: Bool = false, timing: Bool = false) -> ExpressResponseHead.Outcome {
        Array(text.utf8).withUnsafeBytes { ExpressResponseHead.parse($0, requestWasHead: head, maxBytes: 64 * 1024, wantsTiming: timing) }
    }

    private func framing(_ text: String, head: Bool = false) -> ExpressResponseHead.Framing? {
        guard case .parsed(let parsed) = parseResponse(text, head: head) else { return nil }
        return parsed.framing
    }

    /// The eight-bytes-at-a-time scan of reason phrases and field values finds the same end and
    /// refuses the same bytes as the plain byte-by-byte rule, wherever the CR, the tab, the
    /// control byte, DEL or obs-text falls in or across a word.
    func testFieldTextIsScannedAsTheByteByByteRuleReadsIt() {
        func reference(_ bytes: [UInt8], from start: Int, limit: Int) -> Int? {
            var index = start
            while index < limit, bytes[index] != 0x0D {
                let byte = bytes[index]
                guard byte >= 0x20 && byte != 0x7F || byte == 0x09 else { return nil }
                index += 1
            }
            return index
        }
        // Mostly ordinary text, with each kind of byte the rule tells apart now and then.
        let specials: [UInt8] = [0x0D, 0x09, 0x00, 0x0A, 0x1F, 0x7F, 0x80, 0xFF, 0x20, 0x7E, 0x1B]
        var random = FastRandom(seed: 0xF1E1D)
        var refused = 0
        for _ in 0..<50_000 {
            let count = random.below(40)
            var bytes = (0..<count).map { _ in UInt8(0x21 + random.below(0x5E)) }
            for _ in 0..<random.below(3) where count > 0 {
                bytes[random.below(count)] = specials[random.below(specials.count)]
            }
            let start = count == 0 ? 0 : random.below(count)
            let limit = start + random.below(count - start + 1)
            let expected = reference(bytes, from: start, limit: limit)
            let found = bytes.withUnsafeBytes { ExpressResponseHead.fieldTextEnd($0, from: start, limit: limit) }
            XCTAssertEqual(found, expected, "\(bytes) from \(start) to \(limit)")
            if expected == nil { refused += 1 }
        }
        XCTAssertGreaterThan(refused, 5_000, "the cases should include many refused texts")
    }

    /// The write copies the runs of lines between the ones the parse found dropped; a head
    /// with more dropped lines than it keeps, or with `Connection` naming fields, is walked.
    /// 20,000 generated heads, in every mix: what the caller gets is the head without exactly
    /// those lines.
    func testTheCallersHeadIsTheHeadWithoutTheDroppedLinesWhateverTheMix() {
        let kept = ["Server: nginx", "Date: Sun, 29 Nov 2026 17:00:00 GMT", "Content-Type: text/plain", "X-A: a", "ETag: \"1\"",
                    "Connections: not the field", "X-Keep-Alive: kept", "Set-Cookie: a=b; Path=/", "Vary:  Accept ", "X-Empty:"]
        let dropped = ["Connection: keep-alive", "connection: close", "Keep-Alive: timeout=5", "Upgrade: h2c", "Proxy-Connection: x",
                       "PROXY-AUTHENTICATE: Basic", "x-mesh-timing: app=1,proxy=2", "X-Mesh-Timing: app=3,proxy=4"]
        var random = FastRandom(seed: 0xD20)
        var walked = 0
        for _ in 0..<20_000 {
            var lines: [(text: String, keep: Bool)] = []
            for _ in 0..<random.below(12) {
                if random.below(3) == 0 {
                    lines.append((dropped[random.below(dropped.count)], false))
                } else {
                    lines.append((kept[random.below(kept.count)], true))
                }
            }
            // `Connection: x-a` drops the X-A lines too (the walk).
            let namesXA = random.below(10) == 0
            if namesXA {
                lines.insert(("Connection: x-a", false), at: random.below(lines.count + 1))
                lines = lines.map { $0.text == "X-A: a" ? ($0.text, false) : $0 }
            }
            lines.insert(("Content-Length: 2", true), at: random.below(lines.count + 1))
            let reason = ["OK", "", "Fine Thanks"][random.below(3)]
            let statusLine = reason.isEmpty ? "HTTP/1.1 200" : "HTTP/1.1 200 \(reason)"
            let text = statusLine + "\r\n" + lines.map { $0.text + "\r\n" }.joined() + "\r\nhi"
            guard case .parsed(let parsed) = parseResponse(text, timing: true) else {
                XCTFail("not parsed: \(text.debugDescription)")
                continue
            }
            if namesXA || parsed.dropped.overflowed { walked += 1 }
            var out = ByteBuffer()
            Array(text.utf8).withUnsafeBytes { ExpressResponseHead.write($0, parsed, timing: nil, close: false, into: &out) }
            let expected = statusLine + "\r\n" + lines.filter(\.keep).map { $0.text + "\r\n" }.joined() + "\r\n"
            XCTAssertEqual(String(buffer: out), expected, text.debugDescription)
        }
        XCTAssertGreaterThan(walked, 1_000, "the cases should include heads that are walked")
        XCTAssertLessThan(walked, 10_000, "and more that are copied by runs")
    }

    func testResponseFramingFollowsRFC9112() {
        XCTAssertEqual(framing("HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n"), .length(19))
        XCTAssertEqual(framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), ExpressResponseHead.Framing.none)
        XCTAssertEqual(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"), .chunked)
        XCTAssertEqual(framing("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"), .untilClose)
        XCTAssertEqual(framing("HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n", head: true), ExpressResponseHead.Framing.none)
        XCTAssertEqual(framing("HTTP/1.1 204 No Content\r\n\r\n"), ExpressResponseHead.Framing.none)
        XCTAssertEqual(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), ExpressResponseHead.Framing.none)
        XCTAssertEqual(framing("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"), ExpressResponseHead.Framing.none)
        XCTAssertEqual(framing("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n"), .length(1), "the reason phrase may be absent")

        guard case .parsed(let old) = parseResponse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
              case .parsed(let oldKept) = parseResponse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"),
              case .parsed(let closing) = parseResponse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
              case .parsed(let plain) = parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"),
              case .parsed(let endless) = parseResponse("HTTP/1.1 200 OK\r\n\r\n") else { return XCTFail("not parsed") }
        XCTAssertFalse(old.keepAlive)
        XCTAssertTrue(oldKept.keepAlive)
        XCTAssertFalse(closing.keepAlive)
        XCTAssertTrue(plain.keepAlive)
        XCTAssertFalse(endless.keepAlive, "a body delimited by the close ends the connection")
    }

    func testResponsesAProxyMustNotPassOnAreRefused() {
        for text in ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                     "HTTP/1.1 200 OK\nContent-Length: 1\n\n",
                     "HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 1\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
                     "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
                     "HTTP/2 200 OK\r\n\r\n",
                     "ICY 200 OK\r\n\r\n",
                     "HTTP/1.1 20 OK\r\n\r\n",
                     "HTTP/1.1 099 Low\r\n\r\n"] {
            guard case .invalid = parseResponse(text) else {
                XCTFail("passed on: \(text.debugDescription)")
                continue
            }
        }
        guard case .incomplete = parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n") else { return XCTFail("not incomplete") }
    }

    func testTheCallerGetsTheHeadWithoutHopByHopFields() throws {
        let text = "HTTP/1.0 200 Fine\r\nServer: app\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
            + "X-Secret: s\r\nx-mesh-timing: app=1,proxy=2\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n"
            + "Proxy-Authenticate: y\r\nContent-Length: 2\r\nx-secrets: kept\r\n\r\nhi"
        guard case .parsed(let parsed) = parseResponse(text, timing: true) else { return XCTFail("not parsed") }
        XCTAssertEqual(parsed.timing.map { String(decoding: Array(text.utf8)[$0], as: UTF8.self) }, "app=1,proxy=2")
        let peer = Array(text.utf8).withUnsafeBytes { bytes in
            parsed.timing.flatMap { HopTiming(headerValue: UnsafeRawBufferPointer(rebasing: bytes[$0])) }
        }
        XCTAssertEqual(peer, HopTiming(appNanos: 1_000, proxyNanos: 2_000), "the value's bytes read where they are")
        var out = ByteBuffer()
        Array(text.utf8).withUnsafeBytes {
            ExpressResponseHead.write($0, parsed, timing: HopTiming(appNanos: 3_999, proxyNanos: 4_000), close: true, into: &out)
        }
        XCTAssertEqual(String(buffer: out),
                       "HTTP/1.1 200 Fine\r\nServer: app\r\nContent-Length: 2\r\nx-secrets: kept\r\n"
                       + "x-mesh-timing: app=3,proxy=4\r\nconnection: close\r\n\r\n")

        // `Connection` may name anything but the fields that frame the body.
        let framed = "HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding, x-hop\r\nContent-Length: 2\r\nx-hop: 1\r\n\r\nhi"
        guard case .parsed(let framedParsed) = parseResponse(framed) else { return XCTFail("not parsed") }
        var kept = ByteBuffer()
        Array(framed.utf8).withUnsafeBytes { ExpressResponseHead.write($0, framedParsed, timing: nil, close: false, into: &kept) }
        XCTAssertEqual(String(buffer: kept), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        // A body sent in the head's write follows the head's end, in the same buffer.
        var withBody = ByteBuffer()
        Array(framed.utf8).withUnsafeBytes { bytes in
            ExpressResponseHead.write(bytes, framedParsed, timing: nil, close: false,
                                      body: UnsafeRawBufferPointer(rebasing: bytes[framedParsed.length...]), into: &withBody)
        }
        XCTAssertEqual(String(buffer: withBody), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

        let endless = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        guard case .parsed(let untilClose) = parseResponse(endless) else { return XCTFail("not parsed") }
        var chunked = ByteBuffer()
        Array(endless.utf8).withUnsafeBytes { ExpressResponseHead.write($0, untilClose, timing: nil, close: false, into: &chunked) }
        XCTAssertEqual(String(buffer: chunked), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
    }

    // MARK: - Chunked bodies

    /// Runs `body` through a tracker in pieces of `step` bytes: the bytes it took, and whether
    /// it found the end (nil: refused).
    private func track(_ body: String, step: Int) -> (taken: Int, done: Bool)? {
        let bytes = Array(body.utf8)
        var tracker = ChunkedBody()
        var taken = 0
        var index = 0
        while index < bytes.count {
            let piece = Array(bytes[index..<min(bytes.count, index + step)])
            let result = piece.withUnsafeBytes { tracker.advance($0) }
            switch result {
            case .invalid: return nil
            case .consumed(let count, let done):
                taken += count
                if done { return (taken, true) }
                XCTAssertEqual(count, piece.count, "a piece before the end is taken whole")
            }
            index += step
        }
        return (taken, false)
    }

    func testTheEndOfAChunkedBodyIsFoundWhereverTheReadsSplitIt() {
        let body = "5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n"
        for step in 1...body.utf8.count {
            let result = track(body + "HTTP/1.1 200 next", step: step)
            XCTAssertEqual(result?.taken, body.utf8.count, "step \(step)")
            XCTAssertEqual(result?.done, true, "step \(step)")
        }
        XCTAssertEqual(track("0\r\n\r\n", step: 64)?.taken, 5)
        XCTAssertEqual(track("A\r\n0123456789\r\n", step: 64)?.done, false, "no last chunk yet")
    }

    func testMalformedChunkedBodiesAreRefused() {
        for bad in ["x\r\n", "\r\n", "5\r\nhelloX\r\n0\r\n\r\n", "5\nhello\r\n", "5\r\nhello\r\r", "1234567890abcdef0\r\n",
                    "0\r\nx-t: \u{1}\r\n\r\n", "5;\u{0}\r\nhello\r\n"] {
            XCTAssertNil(track(bad, step: 64), bad.debugDescription)
        }
    }
}
