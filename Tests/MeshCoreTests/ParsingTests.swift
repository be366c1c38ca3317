import Foundation
import MeshCore
import XCTest

final class ParsingTests: XCTestCase {
    func testServiceNamesFollowDNSLabelRules() throws {
        XCTAssertEqual(try ServiceName("api-v2").rawValue, "api-v2")
        for bad in ["", "Api", "1api", "api-", "a_b", "a.b", String(repeating: "a", count: 64)] {
            XCTAssertThrowsError(try ServiceName(bad), bad) { error in
                XCTAssertEqual((error as? MeshError)?.code, .invalidServiceName)
            }
        }
    }

    func testHostPortParsing() throws {
        XCTAssertEqual(try HostPort(parsing: "127.0.0.1:7900"), HostPort(host: "127.0.0.1", port: 7900))
        XCTAssertEqual(try HostPort(parsing: "[::1]:80"), HostPort(host: "::1", port: 80))
        XCTAssertEqual(try HostPort(parsing: ":0"), HostPort(host: "0.0.0.0", port: 0))
        for bad in ["localhost", "host:99999", "host:x", "[::1]80"] {
            XCTAssertThrowsError(try HostPort(parsing: bad), bad)
        }
    }

    func testDurations() throws {
        XCTAssertEqual(try DurationParser.seconds("10m"), 600)
        XCTAssertEqual(try DurationParser.seconds("1h30m"), 5400)
        XCTAssertEqual(try DurationParser.seconds("500ms"), 0.5)
        for bad in ["", "10", "m", "10x", "-5s", "0s"] {
            XCTAssertThrowsError(try DurationParser.seconds(bad), bad)
        }
    }

    func testLabels() throws {
        XCTAssertEqual(try Labels(parsing: ["version=v2", "zone=eu-1"]).values, ["version": "v2", "zone": "eu-1"])
        XCTAssertThrowsError(try Labels(parsing: ["novalue"]))
        XCTAssertThrowsError(try Labels(parsing: ["bad key=x"]))
    }

    func testSnapshotAppliesEventsInVersionOrderAndIgnoresReplays() throws {
        let api = try ServiceName("api")
        let a = ServiceInstance(id: "a", service: api, address: "10.0.0.1", inboundPort: 1, labels: Labels(),
                                lastHeartbeat: .init(timeIntervalSince1970: 0), certificateExpiry: nil)
        var b = a
        b.id = "b"
        var snapshot = RegistrySnapshot()
        snapshot.apply(RegistryEvent(version: 3, kind: .snapshot([a], services: [], policies: PolicySet())))
        snapshot.apply(RegistryEvent(version: 4, kind: .upsert(b)))
        snapshot.apply(RegistryEvent(version: 4, kind: .remove(id: "b"))) // replay of an old version: ignored
        XCTAssertEqual(snapshot.endpoints(of: api).map(\.id), ["a", "b"])
        snapshot.apply(RegistryEvent(version: 5, kind: .remove(id: "a")))
        XCTAssertEqual(snapshot.endpoints(of: api).map(\.id), ["b"])
        XCTAssertEqual(snapshot.version, 5)
        snapshot.apply(RegistryEvent(version: 6, kind: .remove(id: "b")))
        XCTAssertTrue(snapshot.endpoints(of: api).isEmpty)
        XCTAssertTrue(snapshot.services.contains(api), "a service with no instances left is still known")
    }

    func testRegistryEventsHaveAPlainJSONForm() throws {
        let api = try ServiceName("api")
        let instance = ServiceInstance(id: "a", service: api, address: "10.0.0.1", inboundPort: 1, labels: Labels(),
                                       lastHeartbeat: .init(timeIntervalSince1970: 0), certificateExpiry: nil)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let remove = String(decoding: try encoder.encode(RegistryEvent(version: 9, kind: .remove(id: "a"))), as: UTF8.self)
        XCTAssertEqual(remove, #"{"id":"a","type":"remove","version":9}"#)
        for event in [RegistryEvent(version: 7, kind: .snapshot([instance], services: [api], policies: PolicySet())),
                      RegistryEvent(version: 8, kind: .upsert(instance)), RegistryEvent(version: 9, kind: .remove(id: "a"))] {
            XCTAssertEqual(try JSONDecoder().decode(RegistryEvent.self, from: try encoder.encode(event)), event)
        }
        XCTAssertThrowsError(try JSONDecoder().decode(RegistryEvent.self, from: Data(#"{"version":1,"type":"explode"}"#.utf8)))
    }

    func testResourcesDecodeByKindAndCentralLabelsOverrideTheInstances() throws {
        let json = #"[{"kind":"ServiceDefaults","metadata":{"name":"api"},"spec":{"mtls":"permissive","labels":{"team":"payments"}}},"# +
            #"{"kind":"AuthorizationPolicy","metadata":{"name":"p"},"spec":{"rules":[{}]}}]"#
        let resources = try JSONDecoder().decode([MeshResource].self, from: Data(json.utf8))
        XCTAssertEqual(resources.map(\.kind), ["ServiceDefaults", "AuthorizationPolicy"])
        XCTAssertEqual(resources.map(\.name), ["api", "p"])
        // Encoded as the resource itself: the same JSON in files, on the wire and in the store.
        let roundTrip = try JSONDecoder().decode([MeshResource].self, from: try JSONEncoder().encode(resources))
        XCTAssertEqual(roundTrip, resources)
        XCTAssertThrowsError(try JSONDecoder().decode(MeshResource.self, from: Data(#"{"kind":"Gateway","metadata":{"name":"x"}}"#.utf8))) {
            XCTAssertTrue("\($0)".contains("unknown kind 'Gateway'"), "\($0)")
        }

        let set = PolicySet(defaultMode: "deny", resources: resources)
        let api = try ServiceName("api")
        XCTAssertEqual(set.defaults(for: api)?.mtls, "permissive")
        XCTAssertEqual(set.effectiveLabels(of: api, own: ["team": "web", "zone": "eu"]), ["team": "payments", "zone": "eu"])
        XCTAssertEqual(set.effectiveLabels(of: try ServiceName("web"), own: ["team": "web"]), ["team": "web"])
        // A set from a control plane that predates ServiceDefaults still decodes.
        let old = try JSONDecoder().decode(PolicySet.self, from: Data(#"{"defaultMode":"deny","policies":[]}"#.utf8))
        XCTAssertTrue(old.services.isEmpty)
    }

    func testTopPathsStayBoundedAndKeepTheHeavyHitters() {
        var top = TopPaths(capacity: 3)
        for index in 0..<300 {
            top.add(method: "GET", path: "/orders", status: 200, latencyMs: 1)
            if index % 2 == 0 { top.add(method: "GET", path: "/users/\(index)", status: 200, latencyMs: 1) }
            if index % 10 == 0 { top.add(method: "POST", path: "/orders", status: 503, latencyMs: 30) }
        }
        let entries = top.take().sorted { $0.requests > $1.requests }
        XCTAssertEqual(entries.count, 3, "ids in paths cannot grow the table")
        XCTAssertEqual(entries.first?.path, "/orders")
        XCTAssertEqual(entries.first?.requests, 300)
        XCTAssertEqual(entries.first?.overcount, 0, "a path that never left the table is counted exactly")
        XCTAssertTrue(top.take().isEmpty, "each report starts afresh")

        // Repeats add to their path's entry: requests, failures (5xx or no answer), buckets.
        for _ in 0..<3 { top.add(method: "GET", path: "/a", status: 200, latencyMs: 1) }
        top.add(method: "GET", path: "/a", status: 502, latencyMs: 300)
        top.add(method: "POST", path: "/a", status: 0, latencyMs: 5)
        let counted = Dictionary(uniqueKeysWithValues: top.take().map { ("\($0.method) \($0.path)", $0) })
        XCTAssertEqual(counted["GET /a"]?.requests, 4)
        XCTAssertEqual(counted["GET /a"]?.failures, 1)
        XCTAssertEqual(counted["GET /a"]?.latencyBuckets.reduce(0, +), 4)
        XCTAssertEqual(counted["POST /a"]?.requests, 1)
        XCTAssertEqual(counted["POST /a"]?.failures, 1)
    }

    func testTrafficReportsThatCouldTrapOrMisleadAreImplausible() {
        var good = EdgeCounters(direction: "outbound", source: "web", destination: "api", tls: true)
        good.add(status: 200, latencyMs: 0.7, denied: false, hopsMs: [0.1, 0.1, 0.1, 0.4])
        good.add(status: 503, latencyMs: 12, denied: false, hopsMs: nil)
        XCTAssertTrue(good.isPlausible)
        XCTAssertEqual(good.failures, 1)
        var noHops = good
        noHops.hopSumsMs = []
        XCTAssertFalse(noHops.isPlausible, "merge and since index four hop sums")
        var huge = good
        huge.latencyBuckets[0] = UInt64.max
        XCTAssertFalse(huge.isPlausible, "sums of reported counters must not overflow")
        var inconsistent = good
        inconsistent.failures = 5
        XCTAssertFalse(inconsistent.isPlausible)
        var forged = good
        forged.source = "\u{1B}[2Jevil"
        XCTAssertFalse(forged.isPlausible, "names end up on an operator's terminal")
        var notANumber = good
        notANumber.latencySumMs = .nan
        XCTAssertFalse(notANumber.isPlausible)
        // Merging never traps, even on counters that would overflow.
        var sum = huge
        sum.merge(huge)
        XCTAssertNotNil(sum.latencyQuantileMs(0.5))

        var path = PathCounters(method: "GET", path: "/orders")
        path.add(status: 200, latencyMs: 1)
        XCTAssertTrue(path.isPlausible)
        var hostile = path
        hostile.path = "/\u{1B}]0;owned\u{7}"
        XCTAssertFalse(hostile.isPlausible)
        hostile = path
        hostile.method = "get everything"
        XCTAssertFalse(hostile.isPlausible)
    }
}
