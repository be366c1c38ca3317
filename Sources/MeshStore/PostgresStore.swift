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
public final class PostgresStore: MeshStore {
    private let client: PostgresClient
    private let runner: Task<Void, Never>
    private let logger: Logger
    private let target: String
    static let schemaVersion = 1
    /// Advisory lock keys (any fixed 64-bit numbers unique to this schema).
    private static let migrationLock: Int64 = 0x5357_4D45_5348_0001
    private static let resourcesLock: Int64 = 0x5357_4D45_5348_0002
    private static let replicaLock: Int64 = 0x5357_4D45_5348_0003
    /// Background tasks that hold a connection for the store's lifetime (the replica lock).
    private let holders = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let closed = NIOLockedValueBox(false)
    private var isClosed: Bool { closed.withLockedValue { $0 } }
    /// Called when another control plane took the database after this one lost its session:
    /// the caller must stop serving (two control planes on one database would diverge).
    private let onLost: (@Sendable () -> Void)?

    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]`) and
    /// migrates the schema. `sslmode`: `disable`, `prefer` (default, as libpq) or `require`
    /// (TLS with the server's certificate verified against the system roots).
    public static func open(url: String, logger: Logger, onLost: (@Sendable () -> Void)? = nil) async throws -> PostgresStore {
        let settings = try Settings(url: url)
        // One direct connection first: the pool retries for a minute before it gives up, and a
        // control plane that cannot reach its database should say so at once.
        do {
            let probe = try await PostgresConnection.connect(configuration: try settings.probeConfiguration(), id: 0, logger: logger)
            try await probe.close()
        } catch {
            throw storeError(error, target: settings.display)
        }
        let client = PostgresClient(configuration: settings.configuration, backgroundLogger: logger)
        let runner = Task { await client.run() }
        let store = PostgresStore(client: client, runner: runner, logger: logger, target: settings.display, onLost: onLost)
        do {
            try await store.migrate()
            try await store.claimDatabase()
        } catch {
            await store.close()
            throw error
        }
        return store
    }

    private init(client: PostgresClient, runner: Task<Void, Never>, logger: Logger, target: String,
                 onLost: (@Sendable () -> Void)?) {
        self.onLost = onLost
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
        }
    }

    /// Until replicas coordinate (registry versions, the CA key, one-at-a-time duties), one
    /// control plane uses a database: it holds a session advisory lock for its lifetime, and a
    /// second one is refused with a clear error instead of serving a diverging registry.
    private func claimDatabase() async throws {
        // A control plane that just stopped may still hold it for a moment (the server
        // notices the closed session a little later): a few tries before giving up.
        var last = MeshError(.storeFailure, "cannot reserve the PostgreSQL database at \(target)")
        for _ in 0..<10 {
            switch await claimOnce() {
            case .held:
                return
            case .taken:
                last = MeshError(.storeFailure, "another mesh control already uses the PostgreSQL database at \(target); run one control plane per database (several replicas on one database come with issue #7's coordination)")
            case .failed(let why):
                last = MeshError(.storeFailure, "cannot reserve the PostgreSQL database at \(target): \(why)")
            }
            try? await Task.sleep(for: .milliseconds(300))
        }
        throw last
    }

    private enum Claim: Sendable { case held, taken, failed(String) }

    /// Takes the lock on a connection of its own and keeps both in a background task, which
    /// checks every 5 s that the session is alive. A lost session (the database restarted,
    /// the network broke) is reclaimed; if another control plane took the database meanwhile,
    /// `onLost` is called.
    private func claimOnce() async -> Claim {
        let claimed = AsyncStream<Claim>.makeStream()
        let holder = Task { [client, logger, target] in
            var held = false
            do {
                try await client.withConnection { connection in
                    for try await value in try await connection.query("SELECT pg_try_advisory_lock(\(Self.replicaLock))", logger: logger)
                        .decode(Bool.self) {
                        held = value
                    }
                    claimed.continuation.yield(held ? .held : .taken)
                    guard held else { return }
                    while true {
                        try await Task.sleep(for: .seconds(5))
                        try await connection.query("SELECT 1", logger: logger)
                    }
                }
            } catch is CancellationError {
                // The store closed.
            } catch {
                if held, !Task.isCancelled {
                    logger.error("lost the PostgreSQL session that reserves the database; reclaiming it",
                                 metadata: ["database": "\(target)", "error": "\(Self.storeError(error, target: target).message)"])
                    Task { await self.reclaim() }
                } else {
                    claimed.continuation.yield(.failed(Self.storeError(error, target: target).message))
                }
            }
            claimed.continuation.finish()
        }
        holders.withLockedValue { $0.append(holder) }
        var iterator = claimed.stream.makeAsyncIterator()
        let result = await iterator.next() ?? .failed("the reservation ended before it answered")
        if case .held = result { return result }
        holder.cancel()
        return result
    }

    /// After a lost session: takes the lock again as soon as the database answers.
    private func reclaim() async {
        while !isClosed {
            switch await claimOnce() {
            case .held:
                logger.notice("the PostgreSQL database is reserved again", metadata: ["database": "\(target)"])
                return
            case .taken:
                logger.critical("another mesh control took the PostgreSQL database while this one had lost its session",
                                metadata: ["database": "\(target)"])
                onLost?()
                return
            case .failed:
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    // MARK: - Resources

    public func listResources() async throws -> [MeshResource] {
        try await guarded {
            var resources: [MeshResource] = []
            for try await (kind, name, spec) in try await client.query("SELECT kind, name, spec FROM resources ORDER BY kind, name",
                                                                       logger: logger).decode((String, String, String).self) {
                resources.append(try ResourceCoding.decode(spec, what: "\(kind)/\(name)"))
            }
            return resources
        }
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
            return entry
        }
    }

    public func history(limit: Int) async throws -> [AuditEntry] {
        let limit = max(1, min(limit, 10000))
        return try await guarded {
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
        try await guarded {
            try await client.query("INSERT INTO join_tokens (hash, service, expires_at) VALUES (\(token.hash), \(service), \(expires))",
                                   logger: logger)
        }
    }

    public func consumeJoinToken(hash: String, now: Date) async throws -> StoredJoinToken {
        let seconds = now.timeIntervalSince1970
        // One statement checks and spends the token: the row lock lets one caller of any
        // replica win, the others see it used.
        let spent: (String, Double)? = try await guarded {
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
        let found: (Double, Double?)? = try await guarded {
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

    public func upsertInstance(_ instance: ServiceInstance) async throws {
        let labels = String(decoding: try JSONEncoder().encode(instance.labels), as: UTF8.self)
        let service = instance.service.rawValue
        let heartbeat = instance.lastHeartbeat.timeIntervalSince1970
        let expiry = instance.certificateExpiry?.timeIntervalSince1970
        try await guarded {
            try await client.query("""
                INSERT INTO instances (id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls,
                                       app_protocol, app_healthy)
                VALUES (\(instance.id), \(service), \(instance.address), \(instance.inboundPort), \(labels), \(heartbeat), \(expiry),
                        \(instance.mtls), \(instance.appProtocol), \(instance.appHealthy))
                ON CONFLICT (id) DO UPDATE SET service = excluded.service, address = excluded.address,
                  inbound_port = excluded.inbound_port, labels = excluded.labels, last_heartbeat = excluded.last_heartbeat,
                  certificate_expiry = excluded.certificate_expiry, mtls = excluded.mtls, app_protocol = excluded.app_protocol,
                  app_healthy = excluded.app_healthy
                """, logger: logger)
        }
    }

    public func deleteInstance(id: String) async throws {
        try await guarded {
            try await client.query("DELETE FROM instances WHERE id = \(id)", logger: logger)
        }
    }

    public func listInstances() async throws -> [ServiceInstance] {
        try await guarded {
            var instances: [ServiceInstance] = []
            let rows = try await client.query("""
                SELECT id, service, address, inbound_port, labels, last_heartbeat, certificate_expiry, mtls, app_protocol, app_healthy
                FROM instances ORDER BY id
                """, logger: logger)
            for try await (id, serviceText, address, port, labelsText, heartbeat, expiry, mtls, appProtocol, appHealthy)
                in rows.decode((String, String, String, Int, String, Double, Double?, String?, String?, Bool?).self) {
                // A row this binary cannot read is skipped, as in the SQLite store.
                guard let service = try? ServiceName(serviceText),
                      let labels = try? JSONDecoder().decode(Labels.self, from: Data(labelsText.utf8)) else { continue }
                instances.append(ServiceInstance(id: id, service: service, address: address, inboundPort: port, labels: labels,
                                                 lastHeartbeat: Date(timeIntervalSince1970: heartbeat),
                                                 certificateExpiry: expiry.map { Date(timeIntervalSince1970: $0) },
                                                 mtls: mtls, appProtocol: appProtocol, appHealthy: appHealthy))
            }
            return instances
        }
    }

    public func loadRegistryVersion() async throws -> UInt64 {
        try await guarded {
            var version: UInt64 = 0
            for try await value in try await client.query("SELECT value FROM meta WHERE key = 'registry_version'", logger: logger)
                .decode(String.self) {
                version = UInt64(value) ?? 0
            }
            return version
        }
    }

    public func saveRegistryVersion(_ version: UInt64) async throws {
        let text = String(version)
        try await guarded {
            // Never lower the stored version, whatever order concurrent saves land in.
            try await client.query("""
                INSERT INTO meta (key, value) VALUES ('registry_version', \(text))
                ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value::NUMERIC, excluded.value::NUMERIC)::TEXT
                """, logger: logger)
        }
    }

    public func close() async {
        closed.withLockedValue { $0 = true }
        for holder in holders.withLockedValue({ $0 }) {
            holder.cancel()
            await holder.value
        }
        runner.cancel()
        await runner.value
    }

    // MARK: - Errors

    /// Runs `body` and turns a PostgreSQL error into a ``MeshError`` that says what failed
    /// (postgres-nio keeps the server's message out of its description on purpose).
    private func guarded<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw Self.storeError(error, target: target)
        }
    }

    private func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await guarded {
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
