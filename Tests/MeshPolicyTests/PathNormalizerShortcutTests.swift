@testable import MeshPolicy
import XCTest

/// The inbound proxy normalizes every request target; most are already normal and take
/// ``PathNormalizer/alreadyNormal(_:)``. Its answers must be exactly those of the full rules,
/// or a policy would see one path and the app another.
final class PathNormalizerShortcutTests: XCTestCase {
    private func same(_ uri: String, file: StaticString = #filePath, line: UInt = #line) {
        switch (PathNormalizer.normalize(uri), PathNormalizer.normalizeFully(uri)) {
        case (.success(let quick), .success(let full)):
            XCTAssertEqual(quick.target, full.target, "target of \(uri.debugDescription)", file: file, line: line)
            XCTAssertEqual(quick.path, full.path, "path of \(uri.debugDescription)", file: file, line: line)
        case (.failure(let quick), .failure(let full)):
            XCTAssertEqual(quick, full, "rejection of \(uri.debugDescription)", file: file, line: line)
        case (let quick, let full):
            XCTFail("\(uri.debugDescription): \(quick) with the shortcut, \(full) without", file: file, line: line)
        }
    }

    func testCommonTargetsTakeTheShortcut() {
        for uri in ["/", "/api/v1/users", "/api/v1/users/", "/index.html", "/a/.../b", "/search?q=a/../b&x=%2F",
                    "/helloworld.Greeter/SayHello", "/user@host:8080/x=1,2", "/~me/(a)+b*c!d$e&f'g"] {
            let shortcut = PathNormalizer.alreadyNormal(uri)
            XCTAssertNotNil(shortcut, "\(uri) is already normal")
            XCTAssertEqual(shortcut?.target, uri)
            same(uri)
        }
    }

    func testTargetsThatNeedWorkDoNotTakeTheShortcut() {
        for uri in ["//a", "/a//b", "/a/./b", "/a/../b", "/.", "/..", "/a/.", "/a/..", "/a%2eb", "/a;b", "/a\\b",
                    "/a?b#c", "/a?b\u{0}", "a", "*", "http://x/y", "/caf\u{e9}", "/a b", "/a#b"] {
            XCTAssertNil(PathNormalizer.alreadyNormal(uri), "\(uri.debugDescription) needs the full rules")
            same(uri)
        }
    }

    /// Thousands of targets built from the pieces that matter (dots, slashes, escapes,
    /// separators), with a fixed seed: the shortcut and the full rules always agree.
    func testShortcutAgreesWithTheFullRules() {
        let pieces = ["/", "/", "/", "a", "b", ".", "..", "...", "%2e", "%2E", "%2F", "%41", "%zz", "%", "?", "#", ";", "\\",
                      ":", "@", "~", "-", "_", "=", "&", "+", " ", "\u{0}", "\u{e9}", "%C3%A9", "%C0%AF", "x.y"]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        var shortcuts = 0
        for _ in 0..<20_000 {
            var uri = next(8) == 0 ? "" : "/"
            for _ in 0..<(1 + next(8)) { uri += pieces[next(pieces.count)] }
            if PathNormalizer.alreadyNormal(uri) != nil { shortcuts += 1 }
            same(uri)
        }
        XCTAssertGreaterThan(shortcuts, 100, "the corpus exercises the shortcut too")
    }
}
