import Foundation
import MeshTelemetry
import XCTest

/// Access log lines are valid JSON whatever a caller puts in the path, and the writer never
/// holds more than its bound.
final class AccessLogTests: XCTestCase {
    func testLinesAreJSONEvenForHostilePaths() throws {
        var entry = AccessLogEntry(direction: "inbound", sourceService: "web", sourceIdentity: "spiffe://mesh.local/ns/default/sa/web",
                                   destinationService: "api", destinationIdentity: "spiffe://mesh.local/ns/default/sa/api",
                                   method: "GET", path: "/a\"b\\c\n{\"status\":200}\u{1}é", status: 403, tls: true, durationNanos: 1_234_567)
        entry.hops = [("proxy", 45_000), ("app", 1_000_000)]
        entry.decision = "denied-no-matching-allow"
        entry.requestBytes = 10
        let line = entry.encoded()
        XCTAssertFalse(line.contains(UInt8(ascii: "\n")), "one request, one line")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
        XCTAssertEqual(object["path"] as? String, "/a\"b\\c\n{\"status\":200}\u{1}é")
        XCTAssertEqual(object["status"] as? Int, 403)
        XCTAssertEqual(object["duration_ms"] as? Double, 1.234)
        XCTAssertEqual((object["hops_ms"] as? [String: Double])?["proxy"], 0.045)
        XCTAssertTrue(object["trace_id"] is NSNull)
        let time = try XCTUnwrap(object["time"] as? String)
        XCTAssertNotNil(ISO8601DateFormatter.withFractionalSeconds.date(from: time), time)
    }

    func testTheWriterAppendsToAFileAndDropsBeyondItsBound() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("access-\(UUID().uuidString.prefix(6)).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let log = try AccessLog(destination: path)
        log.write(Array(#"{"n":1}"#.utf8))
        log.write(Array(#"{"n":2}"#.utf8))
        // Far more than the buffer holds, at once: the excess is dropped and counted.
        let big = [UInt8](repeating: UInt8(ascii: "x"), count: AccessLog.capacity / 2)
        for _ in 0..<4 { log.write(big) }
        XCTAssertGreaterThanOrEqual(log.dropped, 2)
        log.close()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("{\"n\":1}\n{\"n\":2}\n"), String(text.prefix(40)))
        XCTAssertThrowsError(try AccessLog(destination: "/nonexistent-dir/access.log")) {
            XCTAssertTrue("\($0)".contains("cannot open the access log /nonexistent-dir/access.log"), "\($0)")
        }
    }
}

private extension ISO8601DateFormatter {
    static var withFractionalSeconds: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
