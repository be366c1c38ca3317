import Foundation
import MeshCore

/// What the control plane persists: join tokens, the service registry and its version counter,
/// the resources operators apply and their audit log.
///
/// Callers depend on this protocol only; `SQLiteStore` is the embedded default and
/// `PostgresStore` the one several control plane replicas share. Every method either
/// completes its change whole or throws a ``MeshError`` with code `store-failure`.
public protocol MeshStore: Sendable {
    /// Stores a new join token (only its SHA-256 is kept).
    func insertJoinToken(_ token: StoredJoinToken) async throws

    /// Marks the token used and returns it, atomically: of two concurrent callers only one
    /// gets the token. Unknown, expired or used tokens throw `token-unknown`,
    /// `token-expired` or `token-used`.
    func consumeJoinToken(hash: String, now: Date) async throws -> StoredJoinToken

    /// Every instance as stored, with the last heartbeat any replica recorded.
    func listInstances() async throws -> [ServiceInstance]

    /// The registry as of one version, read consistently: what a control plane starts from,
    /// and what it reloads when it fell behind the change log.
    func loadRegistryState() async throws -> RegistryState

    /// Writes a registry change and appends the event that announces it, in one transaction,
    /// and returns the event's version (nil when the change found nothing to do: an expiry
    /// of an instance that heartbeated meanwhile, a removal of an unknown one). Versions are
    /// assigned by the database, so every control plane on it hands out the same ones.
    func commitRegistryChange(_ change: RegistryChange) async throws -> UInt64?

    /// Records a heartbeat without announcing anything; false when the instance is gone.
    func touchInstance(id: String, at: Date) async throws -> Bool

    /// The events after `version`, oldest first; nil when the log no longer reaches back that
    /// far (the caller reloads the whole state).
    func registryEvents(after version: UInt64) async throws -> [RegistryEvent]?

    /// Wakes the caller when another control plane committed a change (PostgreSQL's
    /// LISTEN/NOTIFY); a store only one process uses never yields.
    func registryNotifications() -> AsyncStream<Void>

    /// Since when this process holds `duty` (TTL sweeps, CA work), nil when another replica
    /// holds it or the database cannot say. Trying again after a failure is the caller's
    /// periodic call; the duty moves when its holder's session ends.
    func dutyHeldSince(_ duty: StoreDuty) async -> Date?

    /// A value shared by every control plane on the store (the CA, the admin token), set by
    /// the first one that offers it: returns the stored value, which is `value` only when
    /// none was stored.
    func sharedValue(_ key: String, orInsert value: String) async throws -> String

    /// Records that a control plane replica is alive (its addresses, its clock) and returns the
    /// store's clock, for `mesh check`'s list of replicas and its clock-skew warning.
    func reportReplica(_ replica: ReplicaInfo) async throws -> Date

    /// Every replica that reported in the last hour.
    func listReplicas() async throws -> [ReplicaInfo]

    /// Replaces a shared value only if it still is `old` (compare and swap): false when another
    /// control plane changed it first.
    func replaceSharedValue(_ key: String, old: String, new: String) async throws -> Bool

    /// Every stored resource (policies, service defaults), ordered by kind and name.
    func listResources() async throws -> [MeshResource]

    /// Creates or replaces `resources` in one transaction (all or nothing), records every
    /// change in the audit log and, when anything changed, appends a `policies` registry event
    /// holding every resource; unchanged resources are skipped.
    func applyResources(_ resources: [MeshResource], actor: String, at: Date) async throws -> [AuditEntry]

    /// Deletes one resource (and appends the `policies` event); nil when there was none of
    /// that kind and name.
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

/// A registry change as ``MeshStore/commitRegistryChange(_:)`` writes it.
public enum RegistryChange: Sendable, Equatable {
    /// Inserts or replaces the instance.
    case upsert(ServiceInstance)
    /// Removes the instance (deregistration).
    case remove(id: String)
    /// Removes the instance only if its last heartbeat is older than `heartbeatBefore` (the
    /// TTL sweep: a heartbeat through another replica meanwhile keeps it).
    case expire(id: String, heartbeatBefore: Date)
    /// Announces new trust roots (a CA rotation step); writes nothing but the event.
    case trust(TrustUpdate)
}

/// The registry at one version: instances and resources.
public struct RegistryState: Sendable, Equatable {
    public var version: UInt64
    public var instances: [ServiceInstance]
    public var resources: [MeshResource]

    public init(version: UInt64, instances: [ServiceInstance], resources: [MeshResource]) {
        self.version = version
        self.instances = instances
        self.resources = resources
    }
}

/// Work that one control plane at a time does.
public enum StoreDuty: String, Sendable, CaseIterable {
    /// Expiring instances whose heartbeats stopped.
    case sweep
    /// Moving the CA through a root rotation.
    case certificateAuthority = "ca"
}

/// A control plane replica as it last reported itself.
public struct ReplicaInfo: Codable, Sendable, Equatable {
    public var id: String
    public var listen: String
    public var admin: String
    /// When it last reported, by the store's clock.
    public var lastSeen: Date
    /// Its clock minus the store's, in seconds, at that report.
    public var clockSkew: Double

    public init(id: String, listen: String, admin: String, lastSeen: Date, clockSkew: Double) {
        self.id = id
        self.listen = listen
        self.admin = admin
        self.lastSeen = lastSeen
        self.clockSkew = clockSkew
    }
}

enum ReplicaCoding {
    static func encode(_ replica: ReplicaInfo) throws -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        return String(decoding: try encoder.encode(replica), as: UTF8.self)
    }

    static func decode(_ text: String) -> ReplicaInfo? {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return try? decoder.decode(ReplicaInfo.self, from: Data(text.utf8))
    }
}
