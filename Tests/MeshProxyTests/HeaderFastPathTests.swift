@testable import MeshProxy
import NIOCore
import NIOHTTP1
import XCTest

/// The allocation-free header helpers of the data path must say exactly what the general
/// (slower) code said: keep-alive, hop-by-hop stripping, framing and the hop-timing header.
final class HeaderFastPathTests: XCTestCase {
    func testKeepAliveFollowsTheConnectionHeaderInAnyCase() {
        XCTAssertTrue(ProxyHeaders.isKeepAlive(version: .http1_1, [:]))
        XCTAssertFalse(ProxyHeaders.isKeepAlive(version: .http1_0, [:]))
        XCTAssertFalse(ProxyHeaders.isKeepAlive(version: .http1_1, ["Connection": "Close"]))
        XCTAssertFalse(ProxyHeaders.isKeepAlive(version: .http1_1, ["connection": " upgrade ,  CLOSE"]))
        XCTAssertTrue(ProxyHeaders.isKeepAlive(version: .http1_0, ["CONNECTION": "Keep-Alive"]))
        XCTAssertFalse(ProxyHeaders.isKeepAlive(version: .http1_0, ["connection": "keep-alive, close"]))
        XCTAssertTrue(ProxyHeaders.isKeepAlive(version: .http1_1, ["connection": "closed"]), "a token is matched whole")
        XCTAssertTrue(ProxyHeaders.isKeepAlive(version: .http1_1, ["x-connection": "close"]))
        for head in [HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["Connection": "close"]),
                     HTTPRequestHead(version: .http1_0, method: .GET, uri: "/", headers: ["Connection": "keep-alive"]),
                     HTTPRequestHead(version: .http1_0, method: .GET, uri: "/", headers: [:])] {
            XCTAssertEqual(ProxyHeaders.isKeepAlive(version: head.version, head.headers), head.isKeepAlive, "\(head)")
        }
    }

    func testHopByHopHeadersAndThoseConnectionNamesGo() {
        var plain: HTTPHeaders = ["host": "api", "Connection": "keep-alive", "Keep-Alive": "timeout=5", "x-app": "1"]
        ProxyHeaders.stripHopByHop(&plain)
        XCTAssertEqual(plain.map(\.name), ["host", "x-app"])

        var named: HTTPHeaders = ["Connection": "close, X-Secret", "x-secret": "s", "Upgrade": "h2c",
                                  "Proxy-Connection": "x", "proxy-authenticate": "y", "x-kept": "k"]
        ProxyHeaders.stripHopByHop(&named)
        XCTAssertEqual(named.map(\.name), ["x-kept"])

        var none: HTTPHeaders = ["host": "api", "x-connection": "close"]
        ProxyHeaders.stripHopByHop(&none)
        XCTAssertEqual(none.map(\.name), ["host", "x-connection"])
    }

    func testFramingFastPathAgreesWithTheRules() {
        var get = HTTPRequestHead(version: .http1_0, method: .GET, uri: "/", headers: ["host": "api"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&get))
        XCTAssertEqual(get.version, .http1_1)
        XCTAssertEqual(get.headers.map(\.name), ["host"])

        var post = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/", headers: ["Content-Length": "5"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&post))
        XCTAssertEqual(post.headers["content-length"], ["5"])

        var trace = HTTPRequestHead(version: .http1_1, method: .TRACE, uri: "/", headers: ["content-length": "3"])
        XCTAssertNotNil(ProxyHeaders.sanitizeFraming(&trace))

        var conflicting = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/", headers: ["content-length": "3", "Content-Length": "4"])
        XCTAssertNotNil(ProxyHeaders.sanitizeFraming(&conflicting))

        var both = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/",
                                   headers: ["content-length": "3", "Transfer-Encoding": "Chunked"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&both))
        XCTAssertEqual(both.headers["transfer-encoding"], ["chunked"])
        XCTAssertEqual(both.headers["content-length"], [])

        var te = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["TE": "trailers"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&te))
        XCTAssertEqual(te.headers["te"], [], "TE is hop-by-hop on HTTP/1.1")

        // HTTP/2 keeps the one value it allows (gRPC servers insist on it), untouched; any
        // other value, or a second field, goes.
        var grpc = HTTPRequestHead(version: .init(major: 2, minor: 0), method: .POST, uri: "/test.Echo/Unary",
                                   headers: ["content-type": "application/grpc", "te": "trailers", "content-length": "10"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&grpc, http2: true))
        XCTAssertEqual(grpc.headers.map(\.name), ["content-type", "te", "content-length"])
        XCTAssertEqual(grpc.headers["te"], ["trailers"])
        XCTAssertEqual(grpc.version, .http1_1)
        var gzip = HTTPRequestHead(version: .init(major: 2, minor: 0), method: .GET, uri: "/", headers: ["te": "gzip"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&gzip, http2: true))
        XCTAssertEqual(gzip.headers["te"], [])
        var twice = HTTPRequestHead(version: .init(major: 2, minor: 0), method: .GET, uri: "/", headers: ["te": "trailers", "TE": "gzip"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&twice, http2: true))
        XCTAssertEqual(twice.headers["te"], [])
        var trailersTwice = HTTPRequestHead(version: .init(major: 2, minor: 0), method: .GET, uri: "/", headers: ["te": "trailers", "te": "trailers"])
        XCTAssertNil(ProxyHeaders.sanitizeFraming(&trailersTwice, http2: true))
        XCTAssertEqual(trailersTwice.headers["te"], [], "two fields are not the one value HTTP/2 allows")
    }

    func testUnsampledTraceContextIsWellFormedW3C() {
        var random = FastRandom(seed: 42)
        var reference = FastRandom(seed: 42)
        func hex(_ word: UInt64) -> String {
            let digits = String(word, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        var seen = Set<String>()
        for _ in 0..<1000 {
            let header = random.unsampledParent()
            let traceID = TraceParent.traceID(of: header)
            let (high, low, span) = (reference.next() | 1, reference.next(), reference.next() | 1)
            XCTAssertEqual(header, "00-\(hex(high))\(hex(low))-\(hex(span))-00")
            XCTAssertEqual(traceID, hex(high) + hex(low))
            XCTAssertEqual(TraceParent.sampled(header), false, "a valid traceparent that says: not sampled")
            seen.insert(traceID)
        }
        XCTAssertEqual(seen.count, 1000)
    }

    func testTraceParentIsReadOnlyWhenWellFormed() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736", span = "00f067aa0ba902b7"
        for (flags, sampled) in [("01", true), ("00", false), ("03", true), ("02", false), ("0b", true), ("0a", false),
                                 ("ff", true), ("fe", false)] {
            XCTAssertEqual(TraceParent.sampled("00-\(trace)-\(span)-\(flags)"), sampled, flags)
        }
        XCTAssertEqual(TraceParent.sampled("01-\(trace)-\(span)-01-later-fields"), true, "a later version may add fields")
        for bad in ["", "00-\(trace)-\(span)-0", "00-\(trace)-\(span)-01-", "00-\(trace.uppercased())-\(span)-01",
                    "00-\(String(repeating: "0", count: 32))-\(span)-01", "00-\(trace)-\(String(repeating: "0", count: 16))-01",
                    "ff-\(trace)-\(span)-01", "0g-\(trace)-\(span)-01", "00_\(trace)-\(span)-01", "00-\(trace)_\(span)-01",
                    "00-\(trace)-\(span)_01", "00-\(trace)-\(span)-0x", "00-\(trace.dropLast())-\(span)-01",
                    "00-\(trace)-\(span)-01\u{0}"] {
            XCTAssertNil(TraceParent.sampled(bad), bad)
        }
    }

    func testHopTimingHeaderParsesOnlyWellFormedValues() {
        XCTAssertEqual(HopTiming(headerValue: "app=120,proxy=35"), HopTiming(appNanos: 120_000, proxyNanos: 35_000))
        XCTAssertEqual(HopTiming(headerValue: " proxy = 35 , app=7, extra=1"), HopTiming(appNanos: 7_000, proxyNanos: 35_000))
        XCTAssertEqual(HopTiming(headerValue: HopTiming(appNanos: 5_000_000, proxyNanos: 2_000).headerValue),
                       HopTiming(appNanos: 5_000_000, proxyNanos: 2_000))
        for bad in ["", "app=1", "app=1,proxy=", "app=x,proxy=1", "app=-1,proxy=1", "app=1;proxy=2", "app=3600000001,proxy=1",
                    "app=99999999999999999999,proxy=1", String(repeating: "a", count: 65)] {
            XCTAssertNil(HopTiming(headerValue: bad), bad)
        }
    }

    /// A head is written whole after what the buffer held, however wrong the room it was
    /// given: pieces that do not fit make it start again, once, with the room it needs.
    func testAHeadLargerThanItsRoomIsWrittenWholeOnTheSecondTry() {
        var out = ByteBuffer(string: "before|")
        let long = String(repeating: "x", count: 50_000) + "é"
        var attempts = 0
        out.writeHead(capacity: 10) { head in
            attempts += 1
            head.append("GET ")
            head.append(string: long)
            head.append(" HTTP/1.1\r\n")
            head.appendDecimal(0)
            head.append(",")
            head.appendDecimal(UInt64.max)
        }
        XCTAssertEqual(String(buffer: out), "before|GET \(long) HTTP/1.1\r\n0,18446744073709551615")
        XCTAssertEqual(attempts, 2)
    }

    /// The express path writes the timing field straight into the response head: the same
    /// line as the full stack's header, and one the caller's proxy reads back.
    func testTheTimingFieldWrittenIntoAHeadIsTheHeaderTheFullStackSends() {
        for (app, proxy) in [(0, 0), (999, 1_000), (1_234_567, 89_000), (3_599_999_999_999, 42_424_242), (UInt64.max, 7)] {
            let timing = HopTiming(appNanos: UInt64(app), proxyNanos: UInt64(proxy))
            var out = ByteBuffer()
            out.writeHead(capacity: HopTiming.maxFieldBytes) { timing.writeField(into: &$0) }
            let line = String(buffer: out)
            XCTAssertLessThanOrEqual(line.utf8.count, HopTiming.maxFieldBytes)
            XCTAssertEqual(line, "\(HopTiming.header): \(timing.headerValue)\r\n")
            let value = String(decoding: line.utf8.dropFirst("x-mesh-timing: ".utf8.count).dropLast(2), as: UTF8.self)
            if app <= 3_600_000_000_000 {
                XCTAssertEqual(HopTiming(headerValue: value),
                               HopTiming(appNanos: UInt64(app) / 1000 * 1000, proxyNanos: UInt64(proxy) / 1000 * 1000), line)
            }
        }
    }
}
