import Foundation
import Logging
import MeshCore
@testable import MeshStore
import MeshTesting
import XCTest

/// The PostgreSQL store against a real PostgreSQL (Debian's package, started per test): the
/// behaviour every store has (``StoreBehaviour``), migrations that run once when replicas
/// start together, what replicas coordinate through, and clear errors.
final class PostgresStoreTests: XCTestCase {
    private var server: PostgresServer?

    override func setUp() async throws {
        guard PostgresServer.binDirectory != nil else {
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                XCTFail("PostgreSQL is required (MESH_REQUIRE_TOOLS=1) but not installed")
            }
            throw XCTSkip("PostgreSQL not installed (apt-get install postgresql)")
        }
        server = try await PostgresServer.start()
    }

    override func tearDown() async throws {
        server?.stop()
    }

    private var url: String { "postgres://postgres@127.0.0.1:\(server?.port ?? 0)/postgres?sslmode=disable" }

    private func open() async throws -> any MeshStore {
        try await PostgresStore.open(url: url, logger: Logger(label: "test"))
    }

    func testJoinTokenIsConsumedExactlyOnceEvenUnderConcurrentRedemption() async throws {
        try await StoreBehaviour.joinTokenIsConsumedExactlyOnce(open)
    }

    func testExpiredAndUnknownTokensAreRefused() async throws {
        try await StoreBehaviour.expiredAndUnknownTokensAreRefused(open)
    }

    func testRegistryAndVersionSurviveAReopen() async throws {
        try await StoreBehaviour.registryAndVersionSurviveAReopen(open)
    }

    func testRegistryVersionsAreAssignedOnceAndInOrder() async throws {
        try await StoreBehaviour.registryVersionsAreAssignedOnceAndInOrder(open)
    }

    func testResourcesOfEveryKindAreVersionedAuditedAndSurviveAReopen() async throws {
        try await StoreBehaviour.resourcesAreVersionedAuditedAndSurviveAReopen(open)
    }

    func testConcurrentAppliesLoseNoUpdate() async throws {
        try await StoreBehaviour.concurrentAppliesLoseNoUpdate(open)
    }

    /// Three replicas starting at once on an empty database: the schema is created once (no
    /// "already exists" error), and all of them serve.
    func testReplicasStartingTogetherMigrateOnce() async throws {
        let url = self.url
        let stores = try await withThrowingTaskGroup(of: (any MeshStore).self) { group in
            for _ in 0..<3 {
                group.addTask { try await PostgresStore.open(url: url, logger: Logger(label: "test")) }
            }
            var all: [any MeshStore] = []
            for try await store in group { all.append(store) }
            return all
        }
        XCTAssertEqual(stores.count, 3)
        let schema = try PostgresServer.psql("SELECT version FROM schema_version", at: try XCTUnwrap(server).address)
        XCTAssertEqual(schema.out.trimmingCharacters(in: .whitespacesAndNewlines), "\(PostgresStore.schemaVersion)", schema.err)
        for store in stores { await store.close() }
    }

    /// What replicas coordinate through: a change committed through one wakes the others
    /// (NOTIFY) and is in the log they read; a duty is held by one replica at a time and moves
    /// when its holder goes; a shared value is set once, by the first.
    func testReplicasSeeEachOthersChangesShareDutiesAndSharedValues() async throws {
        let a = try await open()
        let b = try await open()
        var wakeups = b.registryNotifications().makeAsyncIterator()
        // The listener's start wakes it once; wait for that so the next wake-up is the commit.
        _ = await wakeups.next()
        let instance = ServiceInstance(id: "api-1", service: try ServiceName("api"), address: "127.0.0.1", inboundPort: 1,
                                       labels: Labels([:]), lastHeartbeat: Date(), certificateExpiry: nil)
        let started = ContinuousClock.now
        let version = try await a.commitRegistryChange(.upsert(instance))
        _ = await wakeups.next()
        let waited = ContinuousClock.now - started
        XCTAssertLessThan(waited, .seconds(1), "a NOTIFY reaches the other replica at once")
        let seen = try await b.registryEvents(after: 0)
        XCTAssertEqual(seen?.last?.version, version)

        let heldByA = await a.dutyHeldSince(.sweep)
        let heldByB = await b.dutyHeldSince(.sweep)
        XCTAssertNotNil(heldByA)
        XCTAssertNil(heldByB, "one replica at a time sweeps")
        let caByB = await b.dutyHeldSince(.certificateAuthority)
        XCTAssertNotNil(caByB, "duties are independent")
        await a.close()
        var moved: Date?
        for _ in 0..<50 where moved == nil {
            moved = await b.dutyHeldSince(.sweep)
            if moved == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        XCTAssertNotNil(moved, "the duty moves once its holder is gone")

        let first = try await b.sharedValue("ca", orInsert: "first")
        let c = try await open()
        let second = try await c.sharedValue("ca", orInsert: "second")
        XCTAssertEqual(first, "first")
        XCTAssertEqual(second, "first", "the first stored value wins")
        await b.close()
        await c.close()
    }

    func testUnreachableDatabaseAndBadURLsGiveClearErrors() async throws {
        let closedPort = try PostgresServer.freePort()
        do {
            _ = try await PostgresStore.open(url: "postgres://mesh:secret@127.0.0.1:\(closedPort)/mesh?sslmode=disable",
                                             logger: Logger(label: "test"))
            XCTFail("opened a store with no server")
        } catch let error as MeshError {
            XCTAssertEqual(error.code, .storeFailure)
            XCTAssertTrue(error.message.contains("cannot reach PostgreSQL at postgres://mesh@127.0.0.1:\(closedPort)/mesh"), error.message)
            XCTAssertFalse(error.message.contains("secret"), "the password never appears in messages")
        }
        for bad in ["mysql://127.0.0.1/x", "postgres:///nohost", "postgres://127.0.0.1/x?sslmode=sometimes"] {
            do {
                _ = try await PostgresStore.open(url: bad, logger: Logger(label: "test"))
                XCTFail("accepted \(bad)")
            } catch let error as MeshError {
                XCTAssertEqual(error.code, .invalidRequest, error.message)
            }
        }
    }
}

/// How `--store` URLs are read: percent-encoding decoded once, passwords never in messages.
final class PostgresURLTests: XCTestCase {
    func testPasswordsAreDecodedOnceAndNeverShown() throws {
        let settings = try PostgresStore.Settings(url: "postgres://mesh:50%25off%40home@db.internal:6543/mesh?sslmode=require")
        XCTAssertEqual(settings.configuration.password, "50%off@home")
        XCTAssertEqual(settings.configuration.username, "mesh")
        XCTAssertEqual(settings.configuration.database, "mesh")
        XCTAssertEqual(settings.configuration.port, 6543)
        XCTAssertEqual(settings.display, "postgres://mesh@db.internal:6543/mesh")
        // An unescaped '#' breaks the URL: the error says how to write it, without the password.
        do {
            _ = try PostgresStore.Settings(url: "postgres://mesh:se#cret@db.internal/mesh")
            XCTFail("accepted a URL whose password was not percent-encoded")
        } catch let error as MeshError {
            XCTAssertFalse(error.message.contains("se#cret") || error.message.contains("cret@"), error.message)
            XCTAssertTrue(error.message.contains("percent-encode"), error.message)
        }
    }
}
