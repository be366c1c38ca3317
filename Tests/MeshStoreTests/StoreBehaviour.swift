import Foundation
import Logging
import MeshCore
import MeshStore
import XCTest

/// What every ``MeshStore`` must do, whichever database is under it: each store's test class
/// runs these against its own implementation (`open` gives the same data on every call, so a
/// second call is a restart).
enum StoreBehaviour {
    typealias Open = () async throws -> any MeshStore

    static func joinTokenIsConsumedExactlyOnce(_ open: Open) async throws {
        let store = try await open()
        let now = Date()
        try await store.insertJoinToken(StoredJoinToken(hash: "h1", service: try ServiceName("api"), expiresAt: now.addingTimeInterval(60)))
        let results = await withTaskGroup(of: Result<StoredJoinToken, Error>.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    do { return .success(try await store.consumeJoinToken(hash: "h1", now: now)) } catch { return .failure(error) }
                }
            }
            var all: [Result<StoredJoinToken, Error>] = []
            for await result in group { all.append(result) }
            return all
        }
        XCTAssertEqual(results.filter { if case .success = $0 { return true } else { return false } }.count, 1)
        for case .failure(let error) in results { XCTAssertEqual((error as? MeshError)?.code, .tokenUsed) }
        await store.close()
    }

    static func expiredAndUnknownTokensAreRefused(_ open: Open) async throws {
        let store = try await open()
        let now = Date()
        try await store.insertJoinToken(StoredJoinToken(hash: "old", service: try ServiceName("api"), expiresAt: now.addingTimeInterval(-1)))
        await XCTAssertThrowsCode(.tokenExpired) { _ = try await store.consumeJoinToken(hash: "old", now: now) }
        await XCTAssertThrowsCode(.tokenUnknown) { _ = try await store.consumeJoinToken(hash: "nope", now: now) }
        await store.close()
    }

    static func registryAndVersionSurviveAReopen(_ open: Open) async throws {
        let store = try await open()
        var instance = ServiceInstance(id: "api-1", service: try ServiceName("api"), address: "10.1.2.3", inboundPort: 15006,
                                       labels: Labels(["version": "v2"]), lastHeartbeat: Date(timeIntervalSince1970: 1000.25),
                                       certificateExpiry: Date(timeIntervalSince1970: 2000), mtls: "permissive")
        instance.trustRoots = ["0a1b", "2c3d"]
        instance.certificateRoot = "2c3d"
        let first = try await store.commitRegistryChange(.upsert(instance))
        XCTAssertEqual(first, 1)
        let touched = try await store.touchInstance(id: "api-1", at: Date(timeIntervalSince1970: 1500))
        XCTAssertTrue(touched)
        let unknown = try await store.touchInstance(id: "nobody", at: Date())
        XCTAssertFalse(unknown, "a heartbeat of an unknown instance says so (its proxy registers again)")
        await store.close()

        let reopened = try await open()
        let state = try await reopened.loadRegistryState()
        var expected = instance
        expected.lastHeartbeat = Date(timeIntervalSince1970: 1500)
        XCTAssertEqual(state.instances, [expected])
        XCTAssertEqual(state.version, 1)
        // The log holds the event as committed (the touch announced nothing).
        let events = try await reopened.registryEvents(after: 0)
        XCTAssertEqual(events, [RegistryEvent(version: 1, kind: .upsert(instance))])
        let none = try await reopened.registryEvents(after: 1)
        XCTAssertEqual(none, [])
        // A sweep spares an instance that heartbeated after its cutoff, and removes one that did not.
        let spared = try await reopened.commitRegistryChange(.expire(id: "api-1", heartbeatBefore: Date(timeIntervalSince1970: 1400)))
        XCTAssertNil(spared)
        let expired = try await reopened.commitRegistryChange(.expire(id: "api-1", heartbeatBefore: Date(timeIntervalSince1970: 1600)))
        XCTAssertEqual(expired, 2)
        let again = try await reopened.commitRegistryChange(.remove(id: "api-1"))
        XCTAssertNil(again, "removing what is gone announces nothing")
        let remaining = try await reopened.listInstances()
        XCTAssertTrue(remaining.isEmpty)
        let tail = try await reopened.registryEvents(after: 1)
        XCTAssertEqual(tail, [RegistryEvent(version: 2, kind: .remove(id: "api-1"))])
        // A version the store never had (a wiped database): the caller must reload.
        let ahead = try await reopened.registryEvents(after: 99)
        XCTAssertNil(ahead)
        await reopened.close()
    }

    /// Concurrent changes (as from several replicas' requests) get versions 1…N, each once,
    /// and the log returns them in order, resource changes included.
    static func registryVersionsAreAssignedOnceAndInOrder(_ open: Open) async throws {
        let store = try await open()
        let versions = try await withThrowingTaskGroup(of: UInt64?.self) { group in
            for i in 0..<20 {
                group.addTask {
                    let instance = ServiceInstance(id: "web-\(i)", service: try ServiceName("web"), address: "127.0.0.1",
                                                   inboundPort: 20000 + i, labels: Labels([:]), lastHeartbeat: Date(timeIntervalSince1970: 1), certificateExpiry: nil)
                    return try await store.commitRegistryChange(.upsert(instance))
                }
            }
            var all: [UInt64] = []
            for try await version in group { all.append(try XCTUnwrap(version)) }
            return all
        }
        XCTAssertEqual(versions.sorted(), Array(1...20))
        let policy = MeshResource.authorizationPolicy(PolicyDocument(name: "web-to-api", spec: .init(
            selector: .init(service: "api"), rules: [.init(from: [.init(services: ["web"])])])))
        _ = try await store.applyResources([policy], actor: "alice", at: Date())
        let logged = try await store.registryEvents(after: 0)
        let events = try XCTUnwrap(logged)
        XCTAssertEqual(events.map(\.version), Array(1...21))
        guard case .policies(let set) = events.last?.kind else { return XCTFail("no policies event after an apply") }
        XCTAssertEqual(set.resources, [policy])
        let fromTen = try await store.registryEvents(after: 10)
        XCTAssertEqual(fromTen?.map(\.version), Array(11...21))
        await store.close()
    }

    static func resourcesAreVersionedAuditedAndSurviveAReopen(_ open: Open) async throws {
        let store = try await open()
        let policy = MeshResource.authorizationPolicy(PolicyDocument(name: "web-to-api", spec: .init(
            selector: .init(service: "api"), rules: [.init(from: [.init(services: ["web"])])])))
        var defaults = ServiceDefaults(service: "api", spec: .init(mtls: "permissive", labels: ["team": "payments"]))
        let created = try await store.applyResources([policy, .serviceDefaults(defaults)], actor: "alice", at: Date(timeIntervalSince1970: 10))
        XCTAssertEqual(created.map { "\($0.action.rawValue) \($0.kind)/\($0.name) v\($0.version)" },
                       ["created AuthorizationPolicy/web-to-api v1", "created ServiceDefaults/api v1"])
        // Re-applying the same resources changes nothing and records nothing.
        let again = try await store.applyResources([policy, .serviceDefaults(defaults)], actor: "alice", at: Date(timeIntervalSince1970: 11))
        XCTAssertTrue(again.isEmpty)
        defaults.spec.mtls = "strict"
        let updated = try await store.applyResources([.serviceDefaults(defaults)], actor: "bob", at: Date(timeIntervalSince1970: 12))
        XCTAssertEqual(updated.first?.version, 2)
        XCTAssertEqual(updated.first?.before?.contains("permissive"), true)
        await store.close()

        let reopened = try await open()
        let listed = try await reopened.listResources()
        XCTAssertEqual(listed, [policy, .serviceDefaults(defaults)])
        // Deleting one kind leaves a same-named resource of another kind alone.
        let missing = try await reopened.deleteResource(kind: PolicyDocument.kindName, name: "api", actor: "bob", at: Date())
        XCTAssertNil(missing)
        let deleted = try await reopened.deleteResource(kind: ServiceDefaults.kindName, name: "api", actor: "bob", at: Date())
        XCTAssertEqual(deleted?.action, .deleted)
        let remaining = try await reopened.listResources()
        XCTAssertEqual(remaining, [policy])
        let history = try await reopened.history(limit: 10)
        XCTAssertEqual(history.map { "\($0.actor) \($0.action.rawValue) \($0.kind)/\($0.name)" },
                       ["bob deleted ServiceDefaults/api", "bob updated ServiceDefaults/api",
                        "alice created ServiceDefaults/api", "alice created AuthorizationPolicy/web-to-api"])
        await reopened.close()
    }

    /// Many concurrent applies of the same resource: every change gets its own version and
    /// audit entry, none is lost.
    static func concurrentAppliesLoseNoUpdate(_ open: Open) async throws {
        let store = try await open()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<12 {
                group.addTask {
                    let defaults = ServiceDefaults(service: "api", spec: .init(labels: ["round": "\(i)"]))
                    _ = try await store.applyResources([.serviceDefaults(defaults)], actor: "writer-\(i)", at: Date())
                }
            }
            try await group.waitForAll()
        }
        let history = try await store.history(limit: 100)
        XCTAssertEqual(history.count, 12, "one audit entry per change")
        XCTAssertEqual(Set(history.map(\.version)), Set(1...12), "versions 1 to 12, each once")
        let listed = try await store.listResources()
        XCTAssertEqual(listed.count, 1)
        await store.close()
    }
}
