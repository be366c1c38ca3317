import Foundation
import Logging
import MeshCore
@testable import MeshStore
import MeshTesting
import XCTest

/// The PostgreSQL store against a real PostgreSQL (Debian's package, started per test): the
/// behaviour every store has (``StoreBehaviour``), migrations that run once when control
/// planes start together, one control plane per database, and clear errors.
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

    func testResourcesOfEveryKindAreVersionedAuditedAndSurviveAReopen() async throws {
        try await StoreBehaviour.resourcesAreVersionedAuditedAndSurviveAReopen(open)
    }

    func testConcurrentAppliesLoseNoUpdate() async throws {
        try await StoreBehaviour.concurrentAppliesLoseNoUpdate(open)
    }

    /// Two control planes starting at once on an empty database: the schema is created once
    /// (no "already exists" error), and only one of them keeps the database; the other says so.
    func testControlPlanesStartingTogetherMigrateOnceAndOnlyOneKeepsTheDatabase() async throws {
        let url = self.url
        let results = await withTaskGroup(of: Result<any MeshStore, Error>.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    do { return .success(try await PostgresStore.open(url: url, logger: Logger(label: "test"))) } catch { return .failure(error) }
                }
            }
            var all: [Result<any MeshStore, Error>] = []
            for await result in group { all.append(result) }
            return all
        }
        let opened = results.compactMap { if case .success(let store) = $0 { return store } else { return nil } }
        let errors = results.compactMap { if case .failure(let error) = $0 { return error } else { return nil } }
        XCTAssertEqual(opened.count, 1, "\(errors)")
        let message = (errors.first as? MeshError)?.message ?? "\(String(describing: errors.first))"
        XCTAssertTrue(message.contains("another mesh control already uses the PostgreSQL database"), message)
        let schema = try PostgresServer.psql("SELECT version FROM schema_version", at: try XCTUnwrap(server).address)
        XCTAssertEqual(schema.out.trimmingCharacters(in: .whitespacesAndNewlines), "1", schema.err)
        // Once the first stops, the database is free for another.
        for store in opened { await store.close() }
        let next = try await open()
        await next.close()
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
