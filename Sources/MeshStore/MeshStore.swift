import Foundation
import MeshCore

/// What the control plane persists: join tokens, the service registry and its version counter.
///
/// Callers depend on this protocol only; `SQLiteStore` is the embedded default and a
/// PostgreSQL implementation joins later behind the same interface. Every method either
/// completes its change whole or throws a ``MeshError`` with code `store-failure`.
public protocol MeshStore: Sendable {
    /// Stores a new join token (only its SHA-256 is kept).
    func insertJoinToken(_ token: StoredJoinToken) async throws

    /// Marks the token used and returns it, atomically: of two concurrent callers only one
    /// gets the token. Unknown, expired or used tokens throw `token-unknown`,
    /// `token-expired` or `token-used`.
    func consumeJoinToken(hash: String, now: Date) async throws -> StoredJoinToken

    /// Inserts or replaces an instance.
    func upsertInstance(_ instance: ServiceInstance) async throws
    func deleteInstance(id: String) async throws
    func listInstances() async throws -> [ServiceInstance]

    /// The registry version counter survives restarts so that versions only ever grow.
    func loadRegistryVersion() async throws -> UInt64
    func saveRegistryVersion(_ version: UInt64) async throws

    func close() async
}

/// A join token as stored: the hash of the secret, the identity it grants, and its life.
public struct StoredJoinToken: Sendable, Equatable {
    public var hash: String
    public var service: ServiceName
    public var expiresAt: Date
    public var usedAt: Date?

    public init(hash: String, service: ServiceName, expiresAt: Date, usedAt: Date? = nil) {
        self.hash = hash
        self.service = service
        self.expiresAt = expiresAt
        self.usedAt = usedAt
    }
}
