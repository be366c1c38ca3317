import Foundation
import Logging
import MeshCore
import SQLiteNIO

/// The embedded default store: one SQLite file in the control plane's data directory.
///
/// One connection, used from one actor, so writes are serialized and
/// ``consumeJoinToken(hash:now:)`` is atomic without extra locking.
public actor SQLiteStore: MeshStore {
    private let connection: SQLiteConnection
    private static let schemaVersion = 6
    /// Store calls run one at a time. The actor alone does not ensure that: it is re-entered
    /// at every `await`, which would let another call's statements land inside a transaction.
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// Opens (creating if needed) the database at `path` and migrates it.
    public static func open(path: String, logger: Logger) async throws -> SQLiteStore {
        do {
            let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
            let store = SQLiteStore(connection: connection)
            do {
                try await store.migrate()
            } catch {
                // A store that cannot be migrated is not used: its connection closes here.
                try? await connection.close()
                throw error
            }
            return store
        } catch let error as MeshError {
            throw error
        } catch {
            throw MeshError(.storeFailure, "cannot open the SQLite store at \(path): \(error); check that the data directory is writable")
        }
    }

    private init(connection: SQLiteConnection) { self.connection = connection }

    private let openedAt = Date()

    private func migrate() async throws {
        try await run("PRAGMA journal_mode=WAL")
        try await run("PRAGMA busy_timeout=5000")
        try await run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        let rows = try await query("SELECT version FROM schema_version")
        let current = rows.first?.column("version")?.integer ?? 0
        if current > Self.schemaVersion {
            throw MeshError(.storeFailure, "the store has schema version \(current), newer than this binary knows (\(Self.schemaVersion)); run a newer mesh")
        }
        if current < 1 {
            try await run("BEGIN")
            try await run("""
                CREATE TABLE join_tokens (
                  hash TEXT PRIMARY KEY, service TEXT NOT NULL,
                  expires_at REAL NOT NULL, used_at REAL)
                """)
            try await run("""
                CREATE TABLE instances (
                  id TEXT PRIMARY KEY, service TEXT NOT NULL, address TEXT NOT NULL,
                  inbound_port INTEGER NOT NULL, labels TEXT NOT NULL,
                  last_heartbeat REAL NOT NULL, certificate_expiry REAL)
                """)
            try await run("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (1)")
            try await run("COMMIT")
        }
        if current < 2 {
            try await run("BEGIN")
            try await run("""
                CREATE TABLE resources (
                  kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                  spec TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (kind, name))
                """)
            try await run("""
                CREATE TABLE audit_log (
                  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
                  action TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                  before TEXT, after TEXT)
                """)
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (2)")
            try await run("COMMIT")
        }
        if current < 3 {
            // The mTLS mode each instance's proxy reports (its --mtls flag).
            try await run("BEGIN")
            try await run("ALTER TABLE instances ADD COLUMN mtls TEXT")
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (3)")
            try await run("COMMIT")
        }
        if current < 4 {
            // What the app speaks (`--app-protocol`) and its health (`--health-check`).
            try await run("BEGIN")
            try await run("ALTER TABLE instances ADD COLUMN app_protocol TEXT")
            try await run("ALTER TABLE instances ADD COLUMN app_healthy INTEGER")
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (4)")
            try await run("COMMIT")
        }
        if current < 5 {
            // The registry's change log: versions are assigned here, with the change.
            try await run("BEGIN")
            try await run("CREATE TABLE registry_events (version INTEGER PRIMARY KEY, event TEXT NOT NULL)")
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (5)")
            try await run("COMMIT")
        }
        if current < 6 {
            // What proxies report for a CA rotation (roots trusted, root of their SVID).
            try await run("BEGIN")
            try await run("ALTER TABLE instances ADD COLUMN trust_roots TEXT")
            try await run("ALTER TABLE instances ADD COLUMN certificate_root TEXT")
            try await run("DELETE FROM schema_version")
            try await run("INSERT INTO schema_version (version) VALUES (6)")
            try await run("COMMIT")
        }
    }

    private func exclusive<T>(_ body: () async throws -> T) async throws -> T {
        while busy { await withCheckedContinuation { waiters.append($0) } }
        busy = true
        defer {
            busy = false
            if !waiters.isEmpty { waiters.removeFirst().resume() }
        }
        return try await body()
    }

    public func listResources() async throws -> [MeshResource] {
        try await exclusive { try await readResources() }
    }

    public func applyResources(_ resources: [MeshResource], actor: String, at: Date) async throws -> [AuditEntry] {
        try await exclusive {
            try await run("BEGIN IMMEDIATE")
            do {
                var entries: [AuditEntry] = []
                for resource in resources {
                    let after = try ResourceCoding.encode(resource)
                    let existing = try await query("SELECT version, spec FROM resources WHERE kind = ? AND name = ?",
                                                   [.text(resource.kind), .text(resource.name)])
                    let before = existing.first?.column("spec")?.string
                    if before == after { continue }
                    let version = Int(existing.first?.column("version")?.integer ?? 0) + 1
                    try await run("INSERT OR REPLACE INTO resources (kind, name, version, spec, updated_at) VALUES (?, ?, ?, ?, ?)",
                                  [.text(resource.kind), .text(resource.name), .integer(version), .text(after),
                                   .float(at.timeIntervalSince1970)])
                    let entry = AuditEntry(at: at, actor: actor, action: before == nil ? .created : .updated, kind: resource.kind,
                                           name: resource.name, version: version, before: before, after: after)
                    try await record(entry)
                    entries.append(entry)
                }
                if !entries.isEmpty { try await appendPoliciesEvent() }
                try await run("COMMIT")
                return entries
            } catch {
                try? await run("ROLLBACK")
                throw error
            }
        }
    }

    public func deleteResource(kind: String, name: String, actor: String, at: Date) async throws -> AuditEntry? {
        try await exclusive {
            try await run("BEGIN IMMEDIATE")
            do {
                let existing = try await query("SELECT version, spec FROM resources WHERE kind = ? AND name = ?",
                                               [.text(kind), .text(name)])
                guard let row = existing.first else {
                    try await run("COMMIT")
                    return nil
                }
                try await run("DELETE FROM resources WHERE kind = ? AND name = ?", [.text(kind), .text(name)])
                let entry = AuditEntry(at: at, actor: actor, action: .deleted, kind: kind, name: name,
                                       version: Int(row.column("version")?.integer ?? 0), before: row.column("spec")?.string, after: nil)
                try await record(entry)
                try await appendPoliciesEvent()
                try await run("COMMIT")
                return entry
            } catch {
                try? await run("ROLLBACK")
                throw error
            }
        }
    }

    public func history(limit: Int) async throws -> [AuditEntry] {
        try await exclusive {
            let rows = try await query("SELECT at, actor, action, kind, name, version, before, after FROM audit_log ORDER BY id DESC LIMIT ?",
                                       [.integer(max(1, min(limit, 10000)))])
            return rows.compactMap { row in
                guard let at = row.column("at")?.double, let actor = row.column("actor")?.string,
                      let action = row.column("action")?.string.flatMap(AuditEntry.Action.init(rawValue:)),
                      let kind = row.column("kind")?.string, let name = row.column("name")?.string,
                      let version = row.column("version")?.integer else { return nil }
                return AuditEntry(at: Date(timeIntervalSince1970: at), actor: actor, action: action, kind: kind, name: name,
                                  version: Int(version), before: row.column("before")?.string, after: row.column("after")?.string)
            }
        }
    }

    private func record(_ entry: AuditEntry) async throws {
        try await run("INSERT INTO audit_log (at, actor, action, kind, name, version, before, after) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      [.float(entry.at.timeIntervalSince1970), .text(entry.actor), .text(entry.action.rawValue), .text(entry.kind),
                       .text(entry.name), .integer(entry.version), entry.before.map { .text($0) } ?? .null,
                       entry.after.map { .text($0) } ?? .null])
    }

    public func insertJoinToken(_ token: StoredJoinToken) async throws {
        try await exclusive {
            try await run("INSERT INTO join_tokens (hash, service, expires_at, used_at) VALUES (?, ?, ?, NULL)",
                          [.text(token.hash), .text(token.service.rawValue), .float(token.expiresAt.timeIntervalSince1970)])
        }
    }

    public func consumeJoinToken(hash: String, now: Date) async throws -> StoredJoinToken {
        try await exclusive {
            // One statement checks and spends the token. The actor alone would not be enough:
            // it is re-entered at every `await`, so a read-then-update could let two callers in.
            let spent = try await query("""
                UPDATE join_tokens SET used_at = ?
                WHERE hash = ? AND used_at IS NULL AND expires_at > ?
                RETURNING service, expires_at
                """, [.float(now.timeIntervalSince1970), .text(hash), .float(now.timeIntervalSince1970)])
            if let row = spent.first, let serviceText = row.column("service")?.string,
               let service = try? ServiceName(serviceText), let expires = row.column("expires_at")?.double {
                return StoredJoinToken(hash: hash, service: service, expiresAt: Date(timeIntervalSince1970: expires), usedAt: now)
            }
            // Not spent: say why.
            let rows = try await query("SELECT expires_at, used_at FROM join_tokens WHERE hash = ?", [.text(hash)])
            guard let row = rows.first else {
                throw MeshError(.tokenUnknown, "the join token is unknown; create one with 'mesh token create --service NAME'")
            }
            if let used = row.column("used_at")?.double {
                throw MeshError(.tokenUsed, "the join token was already used at \(Date(timeIntervalSince1970: used)); tokens are single-use, create a new one")
            }
            let expiresAt = Date(timeIntervalSince1970: row.column("expires_at")?.double ?? 0)
            throw MeshError(.tokenExpired, "the join token expired at \(expiresAt); create a new one with 'mesh token create'")
        }
    }

    public func commitRegistryChange(_ change: RegistryChange) async throws -> UInt64? {
        try await exclusive {
            try await inTransaction {
                switch change {
                case .upsert(let instance):
                    try await writeInstance(instance)
                case .remove(let id):
                    guard try await !query("DELETE FROM instances WHERE id = ? RETURNING id", [.text(id)]).isEmpty else { return nil }
                case .expire(let id, let before):
                    guard try await !query("DELETE FROM instances WHERE id = ? AND last_heartbeat < ? RETURNING id",
                                           [.text(id), .float(before.timeIntervalSince1970)]).isEmpty else { return nil }
                case .trust:
                    break
                }
                return try await appendEvent { EventCoding.event(for: change, version: $0) }
            }
        }
    }

    public func touchInstance(id: String, at: Date) async throws -> Bool {
        try await exclusive {
            try await !query("UPDATE instances SET last_heartbeat = ? WHERE id = ? RETURNING id",
                             [.float(at.timeIntervalSince1970), .text(id)]).isEmpty
        }
    }

    public func listInstances() async throws -> [ServiceInstance] {
        try await exclusive { try await readInstances() }
    }

    public func loadRegistryState() async throws -> RegistryState {
        try await exclusive {
            // One connection: nothing can change between these reads.
            RegistryState(version: try await currentVersion(), instances: try await readInstances(),
                          resources: try await readResources())
        }
    }

    public func registryEvents(after version: UInt64) async throws -> [RegistryEvent]? {
        try await exclusive {
            let latest = try await currentVersion()
            if version == latest { return [] }
            guard version < latest else { return nil }
            let rows = try await query("SELECT version, event FROM registry_events WHERE version > ? ORDER BY version",
                                       [.integer(Int(clamping: version))])
            let events = try rows.map { row in
                let stored = UInt64(row.column("version")?.integer ?? 0)
                return try EventCoding.decode(row.column("event")?.string, version: stored)
            }
            // The log must reach back to the first missing version.
            guard events.first?.version == version + 1 else { return nil }
            return events
        }
    }

    /// One process uses the file: nobody else commits.
    public nonisolated func registryNotifications() -> AsyncStream<Void> {
        AsyncStream { _ in }
    }

    /// One process uses the file: it holds every duty from the start.
    public func dutyHeldSince(_ duty: StoreDuty) async -> Date? { openedAt }

    public func sharedValue(_ key: String, orInsert value: String) async throws -> String {
        try await exclusive {
            try await run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", [.text("shared." + key), .text(value)])
            return try await query("SELECT value FROM meta WHERE key = ?", [.text("shared." + key)]).first?.column("value")?.string ?? value
        }
    }

    /// One process: its clock is the store's.
    public func reportReplica(_ replica: ReplicaInfo) async throws -> Date {
        let now = Date()
        var seen = replica
        seen.lastSeen = now
        seen.clockSkew = 0
        let text = try ReplicaCoding.encode(seen)
        try await exclusive {
            try await run("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [.text("replica." + replica.id), .text(text)])
        }
        return now
    }

    public func listReplicas() async throws -> [ReplicaInfo] {
        try await exclusive {
            let rows = try await query("SELECT value FROM meta WHERE key LIKE 'replica.%'")
            return rows.compactMap { $0.column("value")?.string.flatMap(ReplicaCoding.decode) }
                .filter { $0.lastSeen > Date().addingTimeInterval(-3600) }
                .sorted { $0.id < $1.id }
        }
    }

    public func replaceSharedValue(_ key: String, old: String, new: String) async throws -> Bool {
        try await exclusive {
            try await !query("UPDATE meta SET value = ? WHERE key = ? AND value = ? RETURNING key",
                             [.text(new), .text("shared." + key), .text(old)]).isEmpty
        }
    }

    private func writeInstance(_ instance: ServiceInstance) async throws {
        let labels = String(decoding: try JSONEncoder().encode(instance.labels), as: UTF8.self)
        try await run("""
            INSERT OR REPLACE INTO instances (id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls,
                                              app_protocol, app_healthy, trust_roots, certificate_root)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.text(instance.id), .text(instance.service.rawValue), .text(instance.address),
                  .integer(instance.inboundPort), .text(labels), .float(instance.lastHeartbeat.timeIntervalSince1970),
                  instance.certificateExpiry.map { .float($0.timeIntervalSince1970) } ?? .null,
                  instance.mtls.map { .text($0) } ?? .null, instance.appProtocol.map { .text($0) } ?? .null,
                  instance.appHealthy.map { .integer($0 ? 1 : 0) } ?? .null,
                  InstanceCoding.roots(instance.trustRoots).map { .text($0) } ?? .null,
                  instance.certificateRoot.map { .text($0) } ?? .null])
    }

    private func readInstances() async throws -> [ServiceInstance] {
        let rows = try await query("SELECT id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls, app_protocol, app_healthy, trust_roots, certificate_root FROM instances ORDER BY id")
        return rows.compactMap { row in
            guard let id = row.column("id")?.string,
                  let service = row.column("service")?.string.flatMap({ try? ServiceName($0) }),
                  let address = row.column("address")?.string,
                  let port = row.column("inbound_port")?.integer,
                  let labelsText = row.column("labels")?.string,
                  let labels = try? JSONDecoder().decode(Labels.self, from: Data(labelsText.utf8)),
                  let heartbeat = row.column("last_heartbeat")?.double else { return nil }
            var instance = ServiceInstance(id: id, service: service, address: address, inboundPort: Int(port), labels: labels,
                                           lastHeartbeat: Date(timeIntervalSince1970: heartbeat),
                                           certificateExpiry: row.column("certificate_expiry")?.double.map { Date(timeIntervalSince1970: $0) },
                                           mtls: row.column("mtls")?.string, appProtocol: row.column("app_protocol")?.string,
                                           appHealthy: row.column("app_healthy")?.integer.map { $0 != 0 })
            instance.trustRoots = InstanceCoding.roots(row.column("trust_roots")?.string)
            instance.certificateRoot = row.column("certificate_root")?.string
            return instance
        }
    }

    private func readResources() async throws -> [MeshResource] {
        let rows = try await query("SELECT kind, name, spec FROM resources ORDER BY kind, name")
        return try rows.map { row in
            try ResourceCoding.decode(row.column("spec")?.string,
                                      what: "\(row.column("kind")?.string ?? "?")/\(row.column("name")?.string ?? "?")")
        }
    }

    private func currentVersion() async throws -> UInt64 {
        let rows = try await query("SELECT value FROM meta WHERE key = 'registry_version'")
        return rows.first?.column("value")?.string.flatMap { UInt64($0) } ?? 0
    }

    /// Takes the next version, stores the event made for it and trims the log; inside the
    /// caller's transaction.
    private func appendEvent(_ make: (UInt64) -> RegistryEvent) async throws -> UInt64 {
        let version = try await currentVersion() + 1
        try await run("INSERT OR REPLACE INTO meta (key, value) VALUES ('registry_version', ?)", [.text(String(version))])
        try await run("INSERT INTO registry_events (version, event) VALUES (?, ?)",
                      [.integer(Int(clamping: version)), .text(try EventCoding.encode(make(version)))])
        if version % 100 == 0, version > EventCoding.logLimit {
            try await run("DELETE FROM registry_events WHERE version <= ?", [.integer(Int(clamping: version - EventCoding.logLimit))])
        }
        return version
    }

    /// Appends the `policies` event after a resource change, inside its transaction.
    private func appendPoliciesEvent() async throws {
        let set = PolicySet(defaultMode: "deny", resources: try await readResources())
        _ = try await appendEvent { RegistryEvent(version: $0, kind: .policies(set)) }
    }

    private func inTransaction<T>(_ body: () async throws -> T) async throws -> T {
        try await run("BEGIN IMMEDIATE")
        do {
            let result = try await body()
            try await run("COMMIT")
            return result
        } catch {
            try? await run("ROLLBACK")
            throw error
        }
    }

    public func close() async {
        try? await connection.close()
    }

    private func run(_ sql: String, _ binds: [SQLiteData] = []) async throws {
        _ = try await query(sql, binds)
    }

    private func query(_ sql: String, _ binds: [SQLiteData] = []) async throws -> [SQLiteRow] {
        do {
            return try await connection.query(sql, binds)
        } catch {
            throw MeshError(.storeFailure, "SQLite store error: \(error)")
        }
    }
}
