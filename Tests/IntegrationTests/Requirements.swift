import Foundation
import MeshTesting
import XCTest

/// Skips the test when PostgreSQL is not installed, unless MESH_REQUIRE_TOOLS=1 (CI), where
/// a missing PostgreSQL fails it.
func requirePostgreSQL() throws {
    guard PostgresServer.binDirectory == nil else { return }
    if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
        throw TestFailure("PostgreSQL is required (MESH_REQUIRE_TOOLS=1) but not installed")
    }
    throw XCTSkip("PostgreSQL not installed (apt-get install postgresql)")
}
