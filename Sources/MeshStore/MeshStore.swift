import Foundation
import MeshCore

/// What the control plane persists: join tokens, the service registry and its version counter,
/// the resources operators apply and their audit log.
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

    /// Every stored resource (policies, service defaults), ordered by kind and name.
    func listResources() async throws -> [MeshResource]

    /// Creates or replaces `resources` in one transaction (all or nothing) and records every
    /// change in the audit log; unchanged resources are skipped.
    func applyResources(_ resources: [MeshResource], actor: String, at: Date) async throws -> [AuditEntry]

    /// Deletes one resource; nil when there was none of that kind and name.
    func deleteResource(kind: String, name: String, actor: String, at: Date) async throws -> AuditEntry?

    /// The newest `limit` audit entries, newest first.
    func history(limit: Int) async throws -> [AuditEntry]

    func close() async
}

/// One change to a resource: who, when, what.
public struct AuditEntry: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable { case created, updated, deleted }
    public var at: Date
    public var actor: String
    public var action: Action
    public var kind: String
    public var name: String
    /// The resource's version after the change (its last version for a delete).
    public var version: Int
    /// JSON of the resource before and after (nil where it did not exist).
    public var before: String?
    public var after: String?

    public init(at: Date, actor: String, action: Action, kind: String, name: String, version: Int, before: String?, after: String?) {
        self.at = at
        self.actor = actor
        self.action = action
        self.kind = kind
        self.name = name
        self.version = version
        self.before = before
        self.after = after
    }
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
