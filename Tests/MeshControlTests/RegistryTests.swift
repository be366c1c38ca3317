import Foundation
import Logging
import MeshControl
import MeshCore
import MeshStore
import XCTest

/// The registry's versioned stream: reconnecting watchers get what they missed, or a snapshot.
final class RegistryTests: XCTestCase {
    private var directory: URL!
    private var store: SQLiteStore!

    override func setUp() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("registry-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        store = try await SQLiteStore.open(path: directory.appendingPathComponent("mesh.sqlite").path, logger: Logger(label: "test"))
    }

    override func tearDown() async throws {
        await store.close()
        try? FileManager.default.removeItem(at: directory)
    }

    private func instance(_ id: String, _ service: String = "api") throws -> ServiceInstance {
        ServiceInstance(id: id, service: try ServiceName(service), address: "10.0.0.1", inboundPort: 15006,
                        labels: Labels(), lastHeartbeat: Date(), certificateExpiry: nil)
    }

    private func first(_ count: Int, of stream: AsyncStream<RegistryEvent>) async -> [RegistryEvent] {
        var events: [RegistryEvent] = []
        for await event in stream {
            events.append(event)
            if events.count == count { break }
        }
        return events
    }

    func testReconnectingWatcherGetsExactlyTheEventsItMissed() async throws {
        let registry = try await Registry.load(store: store, heartbeatTTL: 60, logger: Logger(label: "test"))
        try await registry.register(try instance("a"))
        let seenVersion = await registry.current.version
        try await registry.register(try instance("b"))
        try await registry.deregister(id: "a", service: try ServiceName("api"))

        let missed = await first(2, of: await registry.watch(since: seenVersion))
        XCTAssertEqual(missed.map(\.version), [seenVersion + 1, seenVersion + 2])
        XCTAssertEqual(missed.first?.kind, .upsert(try instance("b")).withSameIDAs(missed.first?.kind))
        XCTAssertEqual(missed.last?.kind, .remove(id: "a"))
    }

    func testUnknownOrFutureVersionsGetAFullSnapshot() async throws {
        let registry = try await Registry.load(store: store, heartbeatTTL: 60, logger: Logger(label: "test"))
        try await registry.register(try instance("a"))
        for since in [nil, UInt64(999)] {
            let events = await first(1, of: await registry.watch(since: since))
            guard case .snapshot(let instances, let services, _, _) = events.first?.kind else {
                return XCTFail("expected a snapshot for since=\(String(describing: since))")
            }
            XCTAssertEqual(instances.map(\.id), ["a"])
            XCTAssertEqual(services, [try ServiceName("api")])
        }
    }

    func testConcurrentChangesNeverShareAVersionAndSurviveARestart() async throws {
        let registry = try await Registry.load(store: store, heartbeatTTL: 60, logger: Logger(label: "test"))
        let watch = await registry.watch(since: await registry.current.version)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<40 {
                let next = try instance("i\(i)")
                group.addTask { try await registry.register(next) }
            }
            try await group.waitForAll()
        }
        let events = await first(40, of: watch)
        XCTAssertEqual(Set(events.map(\.version)).count, 40, "two changes shared a version")
        let current = await registry.current
        XCTAssertEqual(current.instances.count, 40)

        // A new registry on the same store continues the version sequence.
        let reloaded = try await Registry.load(store: store, heartbeatTTL: 60, logger: Logger(label: "test"))
        let version = await reloaded.current.version
        XCTAssertEqual(version, current.version)
        let reloadedCount = await reloaded.current.instances.count
        XCTAssertEqual(reloadedCount, 40)
    }

    func testInstancesWithoutHeartbeatExpireAndOthersCannotTouchThem() async throws {
        let clock = TestClock()
        let registry = try await Registry.load(store: store, heartbeatTTL: 10, logger: Logger(label: "test"), clock: { clock.now })
        var stale = try instance("old")
        stale.lastHeartbeat = clock.now
        try await registry.register(stale)
        do {
            try await registry.deregister(id: "old", service: try ServiceName("web"))
            XCTFail("another service removed api's instance")
        } catch {
            XCTAssertEqual((error as? MeshError)?.code, .forbidden)
        }
        // An instance last heard from before the sweeper started watching (as after an outage of
        // the control plane) gets TTL + 10 s to come back; one heard from since, a TTL.
        var fromBefore = try instance("before-outage")
        fromBefore.lastHeartbeat = clock.now.addingTimeInterval(-100)
        try await registry.register(fromBefore)
        clock.advance(11)
        await registry.sweep()
        let graced = await registry.current
        XCTAssertEqual(graced.instances.keys.sorted(), ["before-outage"], "the silent instance expired; the one from before the outage waits")
        clock.advance(10)
        await registry.sweep()
        let after = await registry.current
        XCTAssertTrue(after.instances.isEmpty)
        XCTAssertTrue(after.services.contains(try ServiceName("api")), "the service stays known")
    }
}

private extension RegistryEvent.Kind {
    /// Compares upserts by instance id only (heartbeat times differ).
    func withSameIDAs(_ other: RegistryEvent.Kind?) -> RegistryEvent.Kind? {
        guard case .upsert(let mine) = self, case .upsert(let theirs)? = other, mine.id == theirs.id else { return self }
        return other
    }
}

private final class TestClock: @unchecked Sendable {
    private let lock = NSLock()
    private var current = Date()
    var now: Date { lock.withLock { current } }
    func advance(_ seconds: TimeInterval) { lock.withLock { current.addTimeInterval(seconds) } }
}
