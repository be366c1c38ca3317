import Foundation
import Logging
import MeshCore
import MeshStore
import MeshTransport

/// The service registry: who is running where. Authoritative in memory, written through to the
/// store, and published to watching proxies as versioned events.
///
/// Heartbeats refresh `lastHeartbeat` in memory and in the store but publish nothing: only
/// membership and data changes bump the version, so a quiet mesh sends no traffic.
public actor Registry {
    private var snapshot: RegistrySnapshot
    /// Recent events for catching up reconnecting proxies; older versions get a snapshot.
    private var changeLog: [RegistryEvent] = []
    private let changeLogLimit = 1024
    private var watchers: [UUID: AsyncStream<RegistryEvent>.Continuation] = [:]
    private let store: any MeshStore
    private let heartbeatTTL: TimeInterval
    private let clock: @Sendable () -> Date
    private let logger: Logger

    /// Loads the registry. Instances loaded from the store get one TTL of grace, so that a
    /// restarted control plane does not drop proxies before they have had time to reconnect.
    public static func load(store: any MeshStore, heartbeatTTL: TimeInterval, logger: Logger,
                            defaultPolicy: String = "deny",
                            clock: @escaping @Sendable () -> Date = { Date() }) async throws -> Registry {
        let version = try await store.loadRegistryVersion()
        let policies = PolicySet(defaultMode: defaultPolicy, resources: try await store.listResources())
        var instances: [String: ServiceInstance] = [:]
        for var instance in try await store.listInstances() {
            instance.lastHeartbeat = max(instance.lastHeartbeat, clock())
            instances[instance.id] = instance
        }
        return Registry(snapshot: RegistrySnapshot(version: version, instances: instances, policies: policies), store: store,
                        heartbeatTTL: heartbeatTTL, logger: logger, clock: clock)
    }

    private init(snapshot: RegistrySnapshot, store: any MeshStore, heartbeatTTL: TimeInterval,
                 logger: Logger, clock: @escaping @Sendable () -> Date) {
        self.snapshot = snapshot
        self.store = store
        self.heartbeatTTL = heartbeatTTL
        self.logger = logger
        self.clock = clock
    }

    public var current: RegistrySnapshot { snapshot }

    /// Registers or updates an instance; publishes only when something other than the
    /// heartbeat time changed.
    public func register(_ instance: ServiceInstance) async throws {
        let previous = snapshot.instances[instance.id]
        if let previous, previous.service != instance.service {
            throw MeshError(.forbidden, "instance id \(instance.id) belongs to service \(previous.service)")
        }
        try await store.upsertInstance(instance)
        var comparable = instance
        comparable.lastHeartbeat = previous?.lastHeartbeat ?? instance.lastHeartbeat
        if previous == comparable {
            snapshot.instances[instance.id]?.lastHeartbeat = instance.lastHeartbeat
            return
        }
        try await publish(.upsert(instance))
        logger.info("instance registered", metadata: ["service": "\(instance.service)", "instance": "\(instance.id)",
                                                      "endpoint": "\(instance.endpoint)"])
    }

    /// Refreshes an instance's heartbeat. Unknown ids throw `not-found` so that the proxy
    /// registers again (for example after it was swept while partitioned).
    /// A change of the app's health (`appHealthy`) is published at once: the instance leaves
    /// (or rejoins) every proxy's endpoint set.
    public func heartbeat(id: String, service: ServiceName, certificateExpiry: Date?, appHealthy: Bool? = nil) async throws {
        guard var instance = snapshot.instances[id] else {
            throw MeshError(.notFound, "instance \(id) is not registered; register again")
        }
        guard instance.service == service else {
            throw MeshError(.forbidden, "instance \(id) belongs to service \(instance.service), not \(service)")
        }
        instance.lastHeartbeat = clock()
        let expiryChanged = certificateExpiry != nil && certificateExpiry != instance.certificateExpiry
        if let certificateExpiry { instance.certificateExpiry = certificateExpiry }
        let healthChanged = appHealthy != instance.appHealthy
        instance.appHealthy = appHealthy
        try await store.upsertInstance(instance)
        if healthChanged {
            logger.notice(appHealthy == false ? "instance's app is unhealthy: no traffic until it recovers" : "instance's app is healthy",
                          metadata: ["service": "\(service)", "instance": "\(id)"])
        }
        if expiryChanged || healthChanged {
            try await publish(.upsert(instance))
        } else {
            snapshot.instances[id] = instance
        }
    }

    public func deregister(id: String, service: ServiceName) async throws {
        guard let instance = snapshot.instances[id] else { return }
        guard instance.service == service else {
            throw MeshError(.forbidden, "instance \(id) belongs to service \(instance.service), not \(service)")
        }
        try await store.deleteInstance(id: id)
        try await publish(.remove(id: id))
        logger.info("instance deregistered", metadata: ["service": "\(service)", "instance": "\(id)"])
    }

    /// Removes instances whose heartbeat is older than the TTL.
    public func sweep() async {
        let cutoff = clock().addingTimeInterval(-heartbeatTTL)
        for instance in snapshot.instances.values where instance.lastHeartbeat < cutoff {
            do {
                try await store.deleteInstance(id: instance.id)
                try await publish(.remove(id: instance.id))
                logger.info("instance expired (no heartbeat)", metadata: ["service": "\(instance.service)", "instance": "\(instance.id)"])
            } catch {
                logger.warning("cannot expire instance", metadata: ["instance": "\(instance.id)", "error": "\(error)"])
            }
        }
    }

    /// Whether an instance is within its heartbeat TTL.
    public func isHealthy(_ instance: ServiceInstance) -> Bool {
        instance.lastHeartbeat >= clock().addingTimeInterval(-heartbeatTTL)
    }

    /// Subscribes to changes after `since`. The stream starts with what the caller missed —
    /// the events from the change log, or a full snapshot when `since` is unknown or too old —
    /// then carries every later change. A watcher that falls more than the buffer behind is
    /// cut off; it reconnects and catches up from its last version.
    public func watch(since: UInt64?) -> AsyncStream<RegistryEvent> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<RegistryEvent>.makeStream(bufferingPolicy: .bufferingOldest(4096))
        if let since, since == snapshot.version {
            // Up to date: nothing to send yet.
        } else if let since, since < snapshot.version, let first = changeLog.first, first.version <= since + 1 {
            for event in changeLog where event.version > since { continuation.yield(event) }
        } else {
            continuation.yield(RegistryEvent(version: snapshot.version, kind: .snapshot(
                Array(snapshot.instances.values), services: snapshot.services.sorted(), policies: snapshot.policies)))
        }
        watchers[id] = continuation
        continuation.onTermination = { [weak self] _ in
            Task { await self?.removeWatcher(id) }
        }
        return stream
    }

    private func removeWatcher(_ id: UUID) { watchers[id] = nil }

    public var watcherCount: Int { watchers.count }

    public func history(limit: Int) async throws -> [AuditEntry] {
        try await store.history(limit: limit)
    }

    /// Stores `resources` (already validated by the caller) and pushes the new policy set.
    public func apply(_ resources: [MeshResource], actor: String) async throws -> [AuditEntry] {
        let entries = try await store.applyResources(resources, actor: actor, at: clock())
        try await publishPolicies(changedBy: entries)
        return entries
    }

    public func delete(kind: String, name: String, actor: String) async throws -> AuditEntry? {
        let entry = try await store.deleteResource(kind: kind, name: name, actor: actor, at: clock())
        if let entry { try await publishPolicies(changedBy: [entry]) }
        return entry
    }

    /// Merges the changes into the current set and announces it. Merging each call's own
    /// changes (rather than re-reading everything) keeps concurrent applies from overwriting
    /// each other with a stale read; the merge runs without suspending.
    private func publishPolicies(changedBy entries: [AuditEntry]) async throws {
        guard !entries.isEmpty else { return }
        struct Key: Hashable { var kind: String; var name: String }
        var byKey = Dictionary(snapshot.policies.resources.map { (Key(kind: $0.kind, name: $0.name), $0) },
                               uniquingKeysWith: { _, new in new })
        for entry in entries {
            let key = Key(kind: entry.kind, name: entry.name)
            if let after = entry.after, let resource = try? JSONCoding.decoder.decode(MeshResource.self, from: Data(after.utf8)) {
                byKey[key] = resource
            } else {
                byKey[key] = nil
            }
        }
        let set = PolicySet(defaultMode: snapshot.policies.defaultMode, resources: Array(byKey.values))
        try await publish(.policies(set))
        logger.info("policies changed", metadata: ["policies": "\(set.policies.count)", "service_defaults": "\(set.services.count)",
                                                   "version": "\(snapshot.version)"])
    }

    /// Applies and announces a change. The in-memory part runs without suspending, so two
    /// changes can never take the same version (the actor is re-entered at every `await`);
    /// only then is the version persisted.
    private func publish(_ kind: RegistryEvent.Kind) async throws {
        let event = RegistryEvent(version: snapshot.version + 1, kind: kind)
        snapshot.apply(event)
        changeLog.append(event)
        if changeLog.count > changeLogLimit { changeLog.removeFirst(changeLog.count - changeLogLimit) }
        for (id, watcher) in watchers {
            if case .dropped = watcher.yield(event) {
                watcher.finish()
                watchers[id] = nil
            }
        }
        try await store.saveRegistryVersion(event.version)
    }
}
