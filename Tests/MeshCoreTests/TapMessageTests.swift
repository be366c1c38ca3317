import Foundation
import MeshCore
import XCTest

/// The bounds of `mesh tap`'s messages: what a proxy may send and what an order selects.
final class TapMessageTests: XCTestCase {
    private func event(path: String = "/orders/1", source: String = "web", method: String = "GET") -> TapEvent {
        TapEvent(at: Date(), direction: "inbound", source: source, sourceIdentity: "spiffe://mesh.local/ns/default/sa/web",
                 destination: "api", method: method, path: path, status: 200, tls: true, durationMs: 1.5,
                 requestBytes: 0, responseBytes: 10)
    }

    func testPlausibleEventsOnly() {
        XCTAssertTrue(event().isPlausible)
        XCTAssertTrue(event(source: "unauthenticated").isPlausible)
        XCTAssertFalse(event(path: "/a\u{1B}[2J").isPlausible, "escape sequences never reach an operator's terminal")
        XCTAssertFalse(event(path: "/" + String(repeating: "a", count: 600)).isPlausible)
        XCTAssertFalse(event(source: "Not A Service").isPlausible)
        var forged = event()
        forged.durationMs = .nan
        XCTAssertFalse(forged.isPlausible)
        forged = event()
        forged.hopsMs = Dictionary(uniqueKeysWithValues: (0..<5).map { ("h\($0)", 1.0) })
        XCTAssertFalse(forged.isPlausible)
        forged = event()
        forged.type = "status"
        XCTAssertFalse(forged.isPlausible)
    }

    func testOrderFilters() {
        let all = TapOrder(id: "a", maxPerSecond: 10)
        XCTAssertTrue(all.matches(source: "web", destination: "api", method: "GET", path: "/x"))
        let narrow = TapOrder(id: "b", to: "api", from: "web", method: "POST", pathPrefix: "/orders", maxPerSecond: 10)
        XCTAssertTrue(narrow.matches(source: "web", destination: "api", method: "POST", path: "/orders/7"))
        XCTAssertFalse(narrow.matches(source: "web", destination: "api", method: "GET", path: "/orders/7"))
        XCTAssertFalse(narrow.matches(source: "web", destination: "api", method: "POST", path: "/users"))
        XCTAssertFalse(narrow.matches(source: "mobile", destination: "api", method: "POST", path: "/orders"))
        XCTAssertFalse(narrow.matches(source: "web", destination: "store", method: "POST", path: "/orders"))
    }

    func testTapOrdersTravelOnTheWatchStreamWithoutTouchingTheRegistry() throws {
        let event = RegistryEvent(version: 0, kind: .tap([TapOrder(id: "a", to: "api", maxPerSecond: 5)]))
        let data = try JSONEncoder().encode(event)
        XCTAssertEqual(try JSONDecoder().decode(RegistryEvent.self, from: data), event)
        var snapshot = RegistrySnapshot()
        snapshot.apply(RegistryEvent(version: 3, kind: .remove(id: "x")))
        let before = snapshot
        snapshot.apply(event)
        XCTAssertEqual(snapshot, before)
    }
}
