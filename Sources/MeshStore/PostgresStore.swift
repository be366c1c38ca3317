import Foundation
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOSSL
import PostgresNIO

/// The store of a control plane that outgrows one host: a PostgreSQL database (postgres-nio's
/// connection pool), which any number of `mesh control` replicas can share.
///
/// Every change is one statement or one transaction, so what SQLite gets from its single
/// connection holds across replicas too: a join token is spent by one `UPDATE … RETURNING`
/// (row lock: exactly one caller wins), resource changes take a transaction-level advisory
/// lock (two replicas applying at once are serialized, never a lost update), and migrations
/// run under an advisory lock (replicas starting together migrate once).
///
/// Replicas share the registry through its change log: every change takes the next version
/// from one row (`meta.registry_version`, whose row lock orders committers, so versions commit
/// in order), stores its event in `registry_events` and sends `NOTIFY mesh_registry`, which
/// wakes every other replica to read what it missed. Duties one replica at a time does are
/// session advisory locks, held on a connection of their own: when the holder dies, its
/// session ends and another replica takes the duty at its next try.
public final class PostgresStore: MeshStore {
    let client: PostgresClient
    private let runner: Task<Void, Never>
    let logger: Logger
    let target: String
    static let schemaVersion = 3
    /// Advisory lock keys (any fixed 64-bit numbers unique to this schema).
    private static let migrationLock: Int64 = 0x5357_4D45_5348_0001
    private static let resourcesLock: Int64 = 0x5357_4D45_5348_0002
    static func dutyLock(_ duty: StoreDuty) -> Int64 {
        switch duty {
        case .sweep: 0x5357_4D45_5348_0010
        case .certificateAuthority: 0x5357_4D45_5348_0011
        }
    }
    static let notifyChannel = "mesh_registry"
    /// Background tasks that hold a connection (duty locks, LISTEN), cancelled on close.
    let holders = NIOLockedValueBox<[UUID: Task<Void, Never>]>([:])
    private let closed = NIOLockedValueBox(false)
    var isClosed: Bool { closed.withLockedValue { $0 } }
    /// Per duty: since when this process holds it (nil: not held), and whether a holder runs.
    let duties = NIOLockedValueBox<[StoreDuty: (since: Date?, running: Bool)]>([:])
    let notifications = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))

    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]`) and
    /// migrates the schema. `sslmode`: `disable`, `prefer` (default, as libpq) or `require`
    /// (TLS with the server's certificate verified against the system roots).
    public static func open(url: String, logger: Logger) async throws -> PostgresStore {
        let settings = try Settings(url: url)
        // One direct connection first: the pool retries for a minute before it gives up, and a
        // control plane that cannot reach its database should say so at once.
        do {
            let probe = try await PostgresConnection.connect(configuration: try settings.probeConfiguration(), id: 0, logger: logger)
            try await probe.close()
        } catch {
            throw storeError(error, target: settings.display)
        }
        // The pool logs every failed connection attempt at info: while the database is down,
        // that is a line per attempt. The store's own errors say it once, clearly.
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .warning)
        let client = PostgresClient(configuration: settings.configuration, backgroundLogger: poolLogger)
        let runner = Task { await client.run() }
        let store = PostgresStore(client: client, runner: runner, logger: logger, target: settings.display)
        do {
            try await store.migrate()
            store.startListening()
        } catch {
            await store.close()
            throw error
        }
        return store
    }

    private init(client: PostgresClient, runner: Task<Void, Never>, logger: Logger, target: String) {
        self.client = client
        self.runner = runner
        self.logger = logger
        self.target = target
    }

    // MARK: - Schema

    private func migrate() async throws {
        try await transaction { connection in
            // Replicas that start together take turns; the first migrates, the others find it done.
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: self.logger)
            try await connection.query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", logger: self.logger)
            var current = 0
            for try await version in try await connection.query("SELECT version FROM schema_version", logger: self.logger)
                .decode(Int.self) {
                current = version
            }
            if current > Self.schemaVersion {
                throw MeshError(.storeFailure, "the PostgreSQL store has schema version \(current), newer than this binary knows (\(Self.schemaVersion)); run a newer mesh")
            }
            if current < 1 {
                for statement: PostgresQuery in [
                    """
                    CREATE TABLE join_tokens (
                      hash TEXT PRIMARY KEY, service TEXT NOT NULL,
                      expires_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION)
                    """,
                    """
                    CREATE TABLE instances (
                      id TEXT PRIMARY KEY, service TEXT NOT NULL, address TEXT NOT NULL,
                      inbound_port INTEGER NOT NULL, labels TEXT NOT NULL,
                      last_heartbeat DOUBLE PRECISION NOT NULL, certificate_expiry DOUBLE PRECISION,
                      mtls TEXT, app_protocol TEXT, app_healthy BOOLEAN)
                    """,
                    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                    """
                    CREATE TABLE resources (
                      kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                      spec TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, name))
                    """,
                    """
                    CREATE TABLE audit_log (
                      id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
                      action TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
                      before TEXT, after TEXT)
                    """,
                    "DELETE FROM schema_version",
                    "INSERT INTO schema_version (version) VALUES (1)",
                ] {
                    try await connection.query(statement, logger: self.logger)
                }
            }
            if current < 2 {
                // The registry's change log, shared by the replicas; versions come from one row.
                for statement: PostgresQuery in [
                    "CREATE TABLE registry_events (version BIGINT PRIMARY KEY, event TEXT NOT NULL)",
                    "INSERT INTO meta (key, value) VALUES ('registry_version', '0') ON CONFLICT (key) DO NOTHING",
                    "DELETE FROM schema_version",
                    "INSERT INTO schema_version (version) VALUES (2)",
                ] {
                    try await connection.query(statement, logger: self.logger)
                }
            }
            if current < 3 {
                // What proxies report for a CA rotation (roots trusted, root of their SVID).
                for statement: PostgresQuery in [
                    "ALTER TABLE instances ADD COLUMN trust_roots TEXT",
                    "ALTER TABLE instances ADD COLUMN certificate_root TEXT",
                    "DELETE FROM schema_version",
                    "INSERT INTO schema_version (version) VALUES (3)",
                ] {
                    try await connection.query(statement, logger: self.logger)
                }
            }
        }
    }

    // MARK: - Resources

    public func listResources() async throws -> [MeshResource] {
        try await guarded { [self] in try await readResources(client) }
    }

    /// On the pool or inside a transaction (both are `PostgresQueryable`).
    private func readResources(_ on: some Queryable) async throws -> [MeshResource] {
        var resources: [MeshResource] = []
        for try await (kind, name, spec) in try await on.run("SELECT kind, name, spec FROM resources ORDER BY kind, name", logger)
            .decode((String, String, String).self) {
            resources.append(try ResourceCoding.decode(spec, what: "\(kind)/\(name)"))
        }
        return resources
    }

    public func applyResources(_ resources: [MeshResource], actor: String, at: Date) async throws -> [AuditEntry] {
        let encoded = try resources.map { ($0, try ResourceCoding.encode($0)) }
        return try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.resourcesLock))", logger: self.logger)
            var entries: [AuditEntry] = []
            for (resource, after) in encoded {
                let (kind, name) = (resource.kind, resource.name)
                var existing: (version: Int, spec: String)?
                for try await row in try await connection.query("SELECT version, spec FROM resources WHERE kind = \(kind) AND name = \(name)",
                                                                logger: self.logger).decode((Int, String).self) {
                    existing = (row.0, row.1)
                }
                if existing?.spec == after { continue }
                let version = (existing?.version ?? 0) + 1
                let seconds = at.timeIntervalSince1970
                try await connection.query("""
                    INSERT INTO resources (kind, name, version, spec, updated_at) VALUES (\(kind), \(name), \(version), \(after), \(seconds))
                    ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, spec = excluded.spec, updated_at = excluded.updated_at
                    """, logger: self.logger)
                let entry = AuditEntry(at: at, actor: actor, action: existing == nil ? .created : .updated, kind: kind,
                                       name: name, version: version, before: existing?.spec, after: after)
                try await self.record(entry, on: connection)
                entries.append(entry)
            }
            if !entries.isEmpty { try await self.appendPoliciesEvent(on: connection) }
            return entries
        }
    }

    public func deleteResource(kind: String, name: String, actor: String, at: Date) async throws -> AuditEntry? {
        try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.resourcesLock))", logger: self.logger)
            var deleted: (version: Int, spec: String)?
            for try await row in try await connection.query("DELETE FROM resources WHERE kind = \(kind) AND name = \(name) RETURNING version, spec",
                                                            logger: self.logger).decode((Int, String).self) {
                deleted = (row.0, row.1)
            }
            guard let deleted else { return nil }
            let entry = AuditEntry(at: at, actor: actor, action: .deleted, kind: kind, name: name, version: deleted.version,
                                   before: deleted.spec, after: nil)
            try await self.record(entry, on: connection)
            try await self.appendPoliciesEvent(on: connection)
            return entry
        }
    }

    public func history(limit: Int) async throws -> [AuditEntry] {
        let limit = max(1, min(limit, 10000))
        return try await guarded { [self] in
            var entries: [AuditEntry] = []
            let rows = try await client.query("""
                SELECT at, actor, action, kind, name, version, before, after FROM audit_log ORDER BY id DESC LIMIT \(limit)
                """, logger: logger)
            for try await (at, actor, action, kind, name, version, before, after)
                in rows.decode((Double, String, String, String, String, Int, String?, String?).self) {
                guard let action = AuditEntry.Action(rawValue: action) else { continue }
                entries.append(AuditEntry(at: Date(timeIntervalSince1970: at), actor: actor, action: action, kind: kind, name: name,
                                          version: version, before: before, after: after))
            }
            return entries
        }
    }

    private func record(_ entry: AuditEntry, on connection: PostgresConnection) async throws {
        let (at, action) = (entry.at.timeIntervalSince1970, entry.action.rawValue)
        try await connection.query("""
            INSERT INTO audit_log (at, actor, action, kind, name, version, before, after)
            VALUES (\(at), \(entry.actor), \(action), \(entry.kind), \(entry.name), \(entry.version), \(entry.before), \(entry.after))
            """, logger: logger)
    }

    // MARK: - Join tokens

    public func insertJoinToken(_ token: StoredJoinToken) async throws {
        let (service, expires) = (token.service.rawValue, token.expiresAt.timeIntervalSince1970)
        try await guarded { [self] in
            try await client.query("INSERT INTO join_tokens (hash, service, expires_at) VALUES (\(token.hash), \(service), \(expires))",
                                   logger: logger)
        }
    }

    public func consumeJoinToken(hash: String, now: Date) async throws -> StoredJoinToken {
        let seconds = now.timeIntervalSince1970
        // One statement checks and spends the token: the row lock lets one caller of any
        // replica win, the others see it used.
        let spent: (String, Double)? = try await guarded { [self] in
            var spent: (String, Double)?
            for try await row in try await client.query("""
                UPDATE join_tokens SET used_at = \(seconds)
                WHERE hash = \(hash) AND used_at IS NULL AND expires_at > \(seconds)
                RETURNING service, expires_at
                """, logger: logger).decode((String, Double).self) {
                spent = row
            }
            return spent
        }
        if let (serviceText, expires) = spent, let service = try? ServiceName(serviceText) {
            return StoredJoinToken(hash: hash, service: service, expiresAt: Date(timeIntervalSince1970: expires), usedAt: now)
        }
        // Not spent: say why.
        let found: (Double, Double?)? = try await guarded { [self] in
            var found: (Double, Double?)?
            for try await row in try await client.query("SELECT expires_at, used_at FROM join_tokens WHERE hash = \(hash)", logger: logger)
                .decode((Double, Double?).self) {
                found = row
            }
            return found
        }
        guard let (expires, used) = found else {
            throw MeshError(.tokenUnknown, "the join token is unknown; create one with 'mesh token create --service NAME'")
        }
        if let used {
            throw MeshError(.tokenUsed, "the join token was already used at \(Date(timeIntervalSince1970: used)); tokens are single-use, create a new one")
        }
        throw MeshError(.tokenExpired, "the join token expired at \(Date(timeIntervalSince1970: expires)); create a new one with 'mesh token create'")
    }

    // MARK: - Registry

    public func commitRegistryChange(_ change: RegistryChange) async throws -> UInt64? {
        try await transaction { connection in
            switch change {
            case .upsert(let instance):
                try await self.writeInstance(instance, on: connection)
            case .remove(let id):
                var found = false
                for try await _ in try await connection.query("DELETE FROM instances WHERE id = \(id) RETURNING id", logger: self.logger) {
                    found = true
                }
                guard found else { return nil }
            case .expire(let id, let before):
                let seconds = before.timeIntervalSince1970
                var found = false
                for try await _ in try await connection.query(
                    "DELETE FROM instances WHERE id = \(id) AND last_heartbeat < \(seconds) RETURNING id", logger: self.logger) {
                    found = true
                }
                guard found else { return nil }
            case .trust:
                break
            }
            return try await self.appendEvent(on: connection) { EventCoding.event(for: change, version: $0) }
        }
    }

    public func touchInstance(id: String, at: Date) async throws -> Bool {
        let seconds = at.timeIntervalSince1970
        return try await guarded { [self] in
            var found = false
            for try await _ in try await client.query("UPDATE instances SET last_heartbeat = \(seconds) WHERE id = \(id) RETURNING id",
                                                      logger: logger) {
                found = true
            }
            return found
        }
    }

    public func listInstances() async throws -> [ServiceInstance] {
        try await guarded { [self] in try await readInstances(client) }
    }

    public func loadRegistryState() async throws -> RegistryState {
        try await transaction { connection in
            // One snapshot of the database for the three reads.
            try await connection.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", logger: self.logger)
            return RegistryState(version: try await self.currentVersion(connection), instances: try await self.readInstances(connection),
                                 resources: try await self.readResources(connection))
        }
    }

    public func registryEvents(after version: UInt64) async throws -> [RegistryEvent]? {
        try await transaction { connection in
            try await connection.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", logger: self.logger)
            let latest = try await self.currentVersion(connection)
            if version == latest { return [] }
            guard version < latest else { return nil }
            let after = Int64(clamping: version)
            var events: [RegistryEvent] = []
            for try await (stored, text) in try await connection.query(
                "SELECT version, event FROM registry_events WHERE version > \(after) ORDER BY version", logger: self.logger)
                .decode((Int64, String).self) {
                events.append(try EventCoding.decode(text, version: UInt64(clamping: stored)))
            }
            // The log must reach back to the first missing version.
            guard events.first?.version == version + 1 else { return nil }
            return events
        }
    }

    private func writeInstance(_ instance: ServiceInstance, on connection: PostgresConnection) async throws {
        let labels = String(decoding: try JSONEncoder().encode(instance.labels), as: UTF8.self)
        let service = instance.service.rawValue
        let heartbeat = instance.lastHeartbeat.timeIntervalSince1970
        let expiry = instance.certificateExpiry?.timeIntervalSince1970
        let roots = InstanceCoding.roots(instance.trustRoots)
        try await connection.query("""
            INSERT INTO instances (id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls,
                                   app_protocol, app_healthy, trust_roots, certificate_root)
            VALUES (\(instance.id), \(service), \(instance.address), \(instance.inboundPort), \(labels), \(heartbeat), \(expiry),
                    \(instance.mtls), \(instance.appProtocol), \(instance.appHealthy), \(roots), \(instance.certificateRoot))
            ON CONFLICT (id) DO UPDATE SET service = excluded.service, address = excluded.address,
              inbound_port = excluded.inbound_port, labels = excluded.labels, last_heartbeat = excluded.last_heartbeat,
              certificate_expiry = excluded.certificate_expiry, mtls = excluded.mtls, app_protocol = excluded.app_protocol,
              app_healthy = excluded.app_healthy, trust_roots = excluded.trust_roots, certificate_root = excluded.certificate_root
            """, logger: logger)
    }

    private func readInstances(_ on: some Queryable) async throws -> [ServiceInstance] {
        var instances: [ServiceInstance] = []
        let rows = try await on.run("""
            SELECT id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls, app_protocol, app_healthy,
                   trust_roots, certificate_root
            FROM instances ORDER BY id
            """, logger)
        for try await (id, serviceText, address, port, labelsText, heartbeat, expiry, mtls, appProtocol, appHealthy, roots, certificateRoot)
            in rows.decode((String, String, String, Int, String, Double, Double?, String?, String?, Bool?, String?, String?).self) {
            // A row this binary cannot read is skipped, as in the SQLite store.
            guard let service = try? ServiceName(serviceText),
                  let labels = try? JSONDecoder().decode(Labels.self, from: Data(labelsText.utf8)) else { continue }
            var instance = ServiceInstance(id: id, service: service, address: address, inboundPort: port, labels: labels,
                                           lastHeartbeat: Date(timeIntervalSince1970: heartbeat),
                                           certificateExpiry: expiry.map { Date(timeIntervalSince1970: $0) },
                                           mtls: mtls, appProtocol: appProtocol, appHealthy: appHealthy)
            instance.trustRoots = InstanceCoding.roots(roots)
            instance.certificateRoot = certificateRoot
            instances.append(instance)
        }
        return instances
    }

    private func currentVersion(_ connection: PostgresConnection) async throws -> UInt64 {
        var version: UInt64 = 0
        for try await value in try await connection.query("SELECT value FROM meta WHERE key = 'registry_version'", logger: logger)
            .decode(String.self) {
            version = UInt64(value) ?? 0
        }
        return version
    }

    /// Takes the next version (the row lock on `registry_version` makes concurrent committers
    /// wait, so versions commit in order), stores the event, trims the log and notifies the
    /// other replicas (delivered at commit); inside the caller's transaction.
    private func appendEvent(on connection: PostgresConnection, _ make: (UInt64) -> RegistryEvent) async throws -> UInt64 {
        var next: UInt64?
        for try await value in try await connection.query("""
            UPDATE meta SET value = (value::BIGINT + 1)::TEXT WHERE key = 'registry_version' RETURNING value
            """, logger: logger).decode(String.self) {
            next = UInt64(value)
        }
        guard let version = next else {
            throw MeshError(.storeFailure, "the PostgreSQL store at \(target) has no registry version row; the schema is damaged")
        }
        let event = try EventCoding.encode(make(version))
        let stored = Int64(clamping: version)
        try await connection.query("INSERT INTO registry_events (version, event) VALUES (\(stored), \(event))", logger: logger)
        if version % 100 == 0, version > EventCoding.logLimit {
            let oldest = Int64(clamping: version - EventCoding.logLimit)
            try await connection.query("DELETE FROM registry_events WHERE version <= \(oldest)", logger: logger)
        }
        let payload = String(version)
        try await connection.query("SELECT pg_notify(\(Self.notifyChannel), \(payload))", logger: logger)
        return version
    }

    /// Appends the `policies` event after a resource change, inside its transaction.
    private func appendPoliciesEvent(on connection: PostgresConnection) async throws {
        let set = PolicySet(defaultMode: "deny", resources: try await readResources(connection))
        _ = try await appendEvent(on: connection) { RegistryEvent(version: $0, kind: .policies(set)) }
    }

    public func close() async {
        closed.withLockedValue { $0 = true }
        for holder in holders.withLockedValue({ Array($0.values) }) {
            holder.cancel()
            await holder.value
        }
        runner.cancel()
        await runner.value
    }

    // MARK: - Errors

    /// Runs `body` and turns a PostgreSQL error into a ``MeshError`` that says what failed
    /// (postgres-nio keeps the server's message out of its description on purpose).
    /// How long one store call may take: the pool waits for a connection for as long as the
    /// database is down, and a control plane must say so (503) rather than hang.
    static let callTimeout: Duration = .seconds(5)

    private struct CallTimeout: Error {}

    func guarded<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        do {
            return try await withThrowingTaskGroup(of: T.self) { group in
                group.addTask { try await body() }
                group.addTask {
                    try await Task.sleep(for: Self.callTimeout)
                    throw CallTimeout()
                }
                defer { group.cancelAll() }
                guard let first = try await group.next() else { throw CancellationError() }
                return first
            }
        } catch is CallTimeout {
            throw MeshError(.storeFailure, "PostgreSQL at \(target) did not answer within \(Self.callTimeout.components.seconds) s; check that it runs and is reachable")
        } catch {
            throw Self.storeError(error, target: target)
        }
    }

    func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await guarded { [self] in
            try await client.withTransaction(logger: logger) { connection in try await body(connection) }
        }
    }

    static func storeError(_ error: Error, target: String) -> MeshError {
        if let error = error as? MeshError { return error }
        // postgres-nio wraps what happened inside a transaction.
        if let wrapped = error as? PostgresTransactionError,
           let inner = wrapped.closureError ?? wrapped.beginError ?? wrapped.commitError {
            return storeError(inner, target: target)
        }
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                return MeshError(.storeFailure, "PostgreSQL at \(target): \(message)")
            }
            return MeshError(.storeFailure, "cannot reach PostgreSQL at \(target) (\(error.code)\(error.underlying.map { ": \($0)" } ?? "")); check that it runs and accepts this user")
        }
        if "\(type(of: error))".contains("ConnectionPoolError") {
            return MeshError(.storeFailure, "cannot reach PostgreSQL at \(target) (no connection succeeded); check that it runs and accepts this user")
        }
        return MeshError(.storeFailure, "PostgreSQL store error at \(target): \(error)")
    }
}

/// Queries on the pool or on one connection (postgres-nio gives both `query` but no shared
/// protocol for it).
protocol Queryable: Sendable {
    func run(_ query: PostgresQuery, _ logger: Logger) async throws -> PostgresRowSequence
}

extension PostgresClient: Queryable {
    func run(_ query: PostgresQuery, _ logger: Logger) async throws -> PostgresRowSequence {
        try await self.query(query, logger: logger)
    }
}

extension PostgresConnection: Queryable {
    func run(_ query: PostgresQuery, _ logger: Logger) async throws -> PostgresRowSequence {
        try await self.query(query, logger: logger)
    }
}
