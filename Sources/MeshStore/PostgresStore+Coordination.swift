import Foundation
import Logging
import MeshCore
import NIOConcurrencyHelpers
import PostgresNIO

/// How replicas on one database coordinate: change notifications (LISTEN/NOTIFY), duties one
/// replica at a time does (session advisory locks on connections of their own), shared values
/// (the sealed CA and admin token) and the replicas' reports of themselves.
extension PostgresStore {
    /// Follows `NOTIFY mesh_registry` on a connection of its own, reconnecting after a
    /// failure. Every (re)start wakes the reader too: notifications sent while this process
    /// was not listening are lost, the log is not.
    func startListening() {
        let listener = Task { [client, logger, notifications, target] in
            while !Task.isCancelled {
                do {
                    try await client.withConnection { connection in
                        try await connection.listen(on: Self.notifyChannel) { sequence in
                            notifications.continuation.yield()
                            for try await _ in sequence { notifications.continuation.yield() }
                        }
                    }
                } catch is CancellationError {
                    return
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("lost the PostgreSQL connection that listens for other replicas' changes; retrying",
                                   metadata: ["database": "\(target)", "error": "\(Self.storeError(error, target: target).message)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        holders.withLockedValue { $0[UUID()] = listener }
    }

    public func registryNotifications() -> AsyncStream<Void> { notifications.stream }

    public func dutyHeldSince(_ duty: StoreDuty) async -> Date? {
        guard !isClosed else { return nil }
        let start: Bool = duties.withLockedValue { all in
            let state = all[duty] ?? (since: nil, running: false)
            if state.running { return false }
            all[duty] = (since: nil, running: true)
            return true
        }
        if start { await claim(duty) }
        return duties.withLockedValue { $0[duty]?.since }
    }

    /// Tries the duty's lock on a connection of its own and, when it gets it, keeps both in a
    /// background task that checks every 2 s that the session is alive; returns once the try
    /// has answered. A lost session gives the duty up (the server released the lock with it).
    private func claim(_ duty: StoreDuty) async {
        let answered = AsyncStream<Void>.makeStream()
        let id = UUID()
        let holder = Task { [client, logger, target, duties, holders] in
            var held = false
            defer {
                duties.withLockedValue { $0[duty] = (since: nil, running: false) }
                holders.withLockedValue { $0[id] = nil }
                answered.continuation.finish()
                if held {
                    logger.notice("gave up a control plane duty", metadata: ["duty": "\(duty.rawValue)"])
                }
            }
            do {
                try await client.withConnection { connection in
                    for try await value in try await connection.query("SELECT pg_try_advisory_lock(\(Self.dutyLock(duty)))", logger: logger)
                        .decode(Bool.self) {
                        held = value
                    }
                    guard held else { return }
                    duties.withLockedValue { $0[duty] = (since: Date(), running: true) }
                    logger.notice("holding a control plane duty", metadata: ["duty": "\(duty.rawValue)"])
                    answered.continuation.yield()
                    while true {
                        try await Task.sleep(for: .seconds(2))
                        try await connection.query("SELECT 1", logger: logger)
                    }
                }
            } catch is CancellationError {
                // The store closed.
            } catch {
                if held, !Task.isCancelled {
                    logger.error("lost the PostgreSQL session that holds a duty; another replica may take it",
                                 metadata: ["duty": "\(duty.rawValue)", "database": "\(target)",
                                            "error": "\(Self.storeError(error, target: target).message)"])
                }
            }
        }
        holders.withLockedValue { all in
            // A holder that already ended must not be kept (it removed itself first).
            if duties.withLockedValue({ $0[duty]?.running ?? false }) { all[id] = holder }
        }
        var iterator = answered.stream.makeAsyncIterator()
        _ = await iterator.next()
    }

    public func sharedValue(_ key: String, orInsert value: String) async throws -> String {
        let stored = "shared." + key
        return try await guarded { [self] in
            try await client.query("INSERT INTO meta (key, value) VALUES (\(stored), \(value)) ON CONFLICT (key) DO NOTHING",
                                   logger: logger)
            var found = value
            for try await text in try await client.query("SELECT value FROM meta WHERE key = \(stored)", logger: logger)
                .decode(String.self) {
                found = text
            }
            return found
        }
    }

    public func reportReplica(_ replica: ReplicaInfo) async throws -> Date {
        let sent = Date()
        return try await guarded { [self] in
            var storeNow = sent
            for try await seconds in try await client.query("SELECT extract(epoch FROM clock_timestamp())::DOUBLE PRECISION", logger: logger)
                .decode(Double.self) {
                storeNow = Date(timeIntervalSince1970: seconds)
            }
            // Half the round trip stands for when the server read its clock.
            let local = sent.addingTimeInterval(Date().timeIntervalSince(sent) / 2)
            var seen = replica
            seen.lastSeen = storeNow
            seen.clockSkew = local.timeIntervalSince(storeNow)
            let (key, text) = ("replica." + replica.id, try ReplicaCoding.encode(seen))
            try await client.query("""
                INSERT INTO meta (key, value) VALUES (\(key), \(text)) ON CONFLICT (key) DO UPDATE SET value = excluded.value
                """, logger: logger)
            return storeNow
        }
    }

    public func listReplicas() async throws -> [ReplicaInfo] {
        try await guarded { [self] in
            var replicas: [ReplicaInfo] = []
            var storeNow = Date()
            for try await seconds in try await client.query("SELECT extract(epoch FROM clock_timestamp())::DOUBLE PRECISION", logger: logger)
                .decode(Double.self) {
                storeNow = Date(timeIntervalSince1970: seconds)
            }
            for try await text in try await client.query("SELECT value FROM meta WHERE key LIKE 'replica.%' ORDER BY key", logger: logger)
                .decode(String.self) {
                if let replica = ReplicaCoding.decode(text), replica.lastSeen > storeNow.addingTimeInterval(-3600) {
                    replicas.append(replica)
                }
            }
            return replicas
        }
    }

    public func replaceSharedValue(_ key: String, old: String, new: String) async throws -> Bool {
        let stored = "shared." + key
        return try await guarded { [self] in
            var replaced = false
            for try await _ in try await client.query("UPDATE meta SET value = \(new) WHERE key = \(stored) AND value = \(old) RETURNING key",
                                                      logger: logger) {
                replaced = true
            }
            return replaced
        }
    }
}
