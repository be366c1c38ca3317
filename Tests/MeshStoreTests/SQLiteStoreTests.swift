import Foundation
import Logging
import MeshCore
import MeshStore
import XCTest

/// The embedded store: the behaviour every store has (``StoreBehaviour``), and a clear error
/// for a directory it cannot write.
final class SQLiteStoreTests: XCTestCase {
    private var directory: URL!

    override func setUp() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() async throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func open() async throws -> any MeshStore {
        try await SQLiteStore.open(path: directory.appendingPathComponent("mesh.sqlite").path, logger: Logger(label: "test"))
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

    func testAnUnwritableDirectoryGivesAClearError() async throws {
        do {
            _ = try await SQLiteStore.open(path: "/nonexistent-dir/mesh.sqlite", logger: Logger(label: "test"))
            XCTFail("opened a store in a missing directory")
        } catch let error as MeshError {
            XCTAssertEqual(error.code, .storeFailure)
            XCTAssertTrue(error.message.contains("/nonexistent-dir/mesh.sqlite"), error.message)
        }
    }
}

func XCTAssertThrowsCode(_ code: MeshError.Code, file: StaticString = #filePath, line: UInt = #line,
                         _ body: () async throws -> Void) async {
    do {
        try await body()
        XCTFail("expected \(code)", file: file, line: line)
    } catch {
        XCTAssertEqual((error as? MeshError)?.code, code, "\(error)", file: file, line: line)
    }
}
