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
        let instance = ServiceInstance(id: "api-1", service: try ServiceName("api"), address: "10.1.2.3", inboundPort: 15006,
                                       labels: Labels(["version": "v2"]), lastHeartbeat: Date(timeIntervalSince1970: 1000),
                                       certificateExpiry: Date(timeIntervalSince1970: 2000), mtls: "permissive")
        try await store.upsertInstance(instance)
        try await store.saveRegistryVersion(42)
        try await store.saveRegistryVersion(41) // a late, older save never lowers it
        await store.close()

        let reopened = try await open()
        let listed = try await reopened.listInstances()
        XCTAssertEqual(listed, [instance])
        let version = try await reopened.loadRegistryVersion()
        XCTAssertEqual(version, 42)
        try await reopened.deleteInstance(id: "api-1")
        let remaining = try await reopened.listInstances()
        XCTAssertTrue(remaining.isEmpty)
        await reopened.close()
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
