import Foundation
import MeshTesting
import XCTest

/// Skips the test when a Debian tool it needs is not installed, unless MESH_REQUIRE_TOOLS=1
/// (CI, which installs them), where a missing tool fails it.
func requireTool(_ installed: Bool, _ what: String) throws {
    guard !installed else { return }
    if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
        throw TestFailure("\(what) is required (MESH_REQUIRE_TOOLS=1) but not installed")
    }
    throw XCTSkip("\(what) not installed")
}

/// Skips the test when PostgreSQL is not installed (see ``requireTool(_:_:)``).
func requirePostgreSQL() throws {
    try requireTool(PostgresServer.binDirectory != nil, "PostgreSQL (apt-get install postgresql)")
}
