import MeshPolicy
import XCTest

final class PathNormalizerTests: XCTestCase {
    private func normalized(_ uri: String) -> String? {
        if case .success(let result) = PathNormalizer.normalize(uri) { return result.target }
        return nil
    }

    private func rejection(_ uri: String) -> PathNormalizer.Rejection? {
        if case .failure(let why) = PathNormalizer.normalize(uri) { return why }
        return nil
    }

    func testDotSegmentsAndSlashesAreNormalizedAsRFC3986Says() {
        XCTAssertEqual(normalized("/a/b/c/./../../g"), "/a/g")
        XCTAssertEqual(normalized("/mid/content=5/../6"), "/mid/6")
        XCTAssertEqual(normalized("/api/../admin"), "/admin")
        XCTAssertEqual(normalized("/../../etc/passwd"), "/etc/passwd")
        XCTAssertEqual(normalized("//admin///users"), "/admin/users")
        XCTAssertEqual(normalized("/api/%2e%2e/admin"), "/admin")
        XCTAssertEqual(normalized("/api/.%2E/admin"), "/admin")
        XCTAssertEqual(normalized("/a/b/"), "/a/b/")
        XCTAssertEqual(normalized("/a/b/.."), "/a/")
        XCTAssertEqual(normalized("/"), "/")
        XCTAssertEqual(normalized("/search?q=a/../b&x=%2F"), "/search?q=a/../b&x=%2F", "the query is left alone")
        XCTAssertEqual(normalized("/caf%C3%A9"), "/caf%C3%A9")
    }

    func testAmbiguousPathsAreRefused() {
        XCTAssertEqual(rejection("/api%2Fadmin"), .encodedSlash)
        XCTAssertEqual(rejection("/api%2fadmin"), .encodedSlash)
        XCTAssertEqual(rejection("/api%5Cadmin"), .encodedBackslash)
        XCTAssertEqual(rejection("/api%00"), .nul)
        XCTAssertEqual(rejection("/api\u{0}x"), .nul)
        XCTAssertEqual(rejection("/page#frag"), .fragment)
        XCTAssertEqual(rejection("api"), .notAbsolute)
        XCTAssertEqual(rejection("http://evil/x"), .notAbsolute)
        XCTAssertEqual(rejection("/bad%zz"), .badPercentEncoding)
        XCTAssertEqual(rejection("/bad%4"), .badPercentEncoding)
        XCTAssertEqual(rejection("/" + String(repeating: "a", count: 9000)), .tooLong)
    }
}
