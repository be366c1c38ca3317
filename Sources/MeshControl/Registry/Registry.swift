import Foundation
import Logging
import MeshCore
import MeshStore
import MeshTransport

/// The service registry: who is running where, and the policies in force. A copy lives in
/// memory, for the watch streams and lookups; the store's change log is the authority.
///
/// Every change is committed to the store with its event (the store assigns the version), then
/// read back from the log (`catchUp`) and published to watching proxies. Changes committed by
/// other control plane replicas arrive the same way, woken by the store's notifications and,
/// as a safety net, every `resyncInterval`. Versions are therefore the same on every replica,
/// and a proxy that moves to another replica resumes from its last version.
///
/// Heartbeats refresh `lastHeartbeat` in the store but publish nothing: only membership and
/// data changes bump the version, so a quiet mesh sends no traffic.
public actor Registry {
    private var snapshot: RegistrySnapshot
    /// Recent events for catching up reconnecting proxies; older versions get a snapshot.
    private var changeLog: [RegistryEvent] = []
    private let changeLogLimit = 1024
    private var watchers: [UUID: AsyncStream<RegistryEvent>.Continuation] = [:]
    private let store: any MeshStore
    private let heartbeatTTL: TimeInterval
    private let defaultPolicy: String
    private let clock: @Sendable () -> Date
    private let logger: Logger
    /// When a store call last failed. Heartbeats may have failed with it, so the sweep waits
    /// one TTL of working store before it expires anything.
    private var lastStoreFailure: Date?
    /// The last store error, while the store fails (for `/v1/health` and `mesh check`).
    public private(set) var storeError: String?
    /// Since when store calls fail (nil while they work).
    private var storeFailingSince: Date?
    /// Called when a `trust` event arrives from the log (a CA rotation step, maybe by another
    /// replica), so that this replica re-reads the CA state.
    private var onTrust: (@Sendable () -> Void)?

    /// Loads the registry from the store.
    public static func load(store: any MeshStore, heartbeatTTL: TimeInterval, logger: Logger,
                            defaultPolicy: String = "deny",
                            clock: @escaping @Sendable () -> Date = { Date() }) async throws -> Registry {
        let state = try await store.loadRegistryState()
        return Registry(snapshot: snapshot(of: state, defaultPolicy: defaultPolicy), store: store, heartbeatTTL: heartbeatTTL,
                        defaultPolicy: defaultPolicy, logger: logger, clock: clock)
    }

    private static func snapshot(of state: RegistryState, defaultPolicy: String) -> RegistrySnapshot {
        RegistrySnapshot(version: state.version, instances: Dictionary(state.instances.map { ($0.id, $0) }, uniquingKeysWith: { _, new in new }),
                         policies: PolicySet(defaultMode: defaultPolicy, resources: state.resources))
    }

    private init(snapshot: RegistrySnapshot, store: any MeshStore, heartbeatTTL: TimeInterval, defaultPolicy: String,
                 logger: Logger, clock: @escaping @Sendable () -> Date) {
        self.snapshot = snapshot
        self.store = store
        self.heartbeatTTL = heartbeatTTL
        self.defaultPolicy = defaultPolicy
        self.logger = logger
        self.clock = clock
    }

    public var current: RegistrySnapshot { snapshot }

    /// The store's error when it has failed for longer than `limit`, else nil.
    func storeFailingLongerThan(_ limit: TimeInterval) -> String? {
        guard let since = storeFailingSince, clock().timeIntervalSince(since) > limit else { return nil }
        return storeError
    }

    /// The roots proxies get with every snapshot, and who to tell when a `trust` event comes.
    func setTrust(_ update: TrustUpdate, onChange: @escaping @Sendable () -> Void) {
        snapshot.trust = update
        onTrust = onChange
    }

    /// Announces new roots to every proxy (through every replica).
    func announceTrust(_ update: TrustUpdate) async throws {
        try await commit(.trust(update))
    }

    /// Registers or updates an instance; publishes only when something other than the
    /// heartbeat time changed.
    public func register(_ registering: ServiceInstance) async throws {
        let previous = snapshot.instances[registering.id]
        var instance = registering
        // Registration does not report trust; keep what heartbeats reported.
        if instance.trustRoots == nil {
            instance.trustRoots = previous?.trustRoots
            instance.certificateRoot = previous?.certificateRoot
        }
        if let previous, previous.service != instance.service {
            throw MeshError(.forbidden, "instance id \(instance.id) belongs to service \(previous.service)")
        }
        var comparable = instance
        comparable.lastHeartbeat = previous?.lastHeartbeat ?? instance.lastHeartbeat
        if previous == comparable, try await stored({ try await store.touchInstance(id: instance.id, at: instance.lastHeartbeat) }) {
            snapshot.instances[instance.id]?.lastHeartbeat = instance.lastHeartbeat
            return
        }
        try await commit(.upsert(instance))
        logger.info("instance registered", metadata: ["service": "\(instance.service)", "instance": "\(instance.id)",
                                                      "endpoint": "\(instance.endpoint)"])
    }

    /// Refreshes an instance's heartbeat. Unknown ids throw `not-found` so that the proxy
    /// registers again (for example after it was swept while partitioned).
    /// A change of the app's health (`appHealthy`) is published at once: the instance leaves
    /// (or rejoins) every proxy's endpoint set.
    public func heartbeat(id: String, service: ServiceName, certificateExpiry: Date?, appHealthy: Bool? = nil,
                          trustRoots: [String]? = nil, certificateRoot: String? = nil) async throws {
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
        // What a CA rotation waits for: recorded (and shared with the other replicas) on change.
        let trustChanged = trustRoots != nil && (trustRoots != instance.trustRoots || certificateRoot != instance.certificateRoot)
        if trustChanged {
            instance.trustRoots = trustRoots
            instance.certificateRoot = certificateRoot
        }
        if healthChanged {
            logger.notice(appHealthy == false ? "instance's app is unhealthy: no traffic until it recovers" : "instance's app is healthy",
                          metadata: ["service": "\(service)", "instance": "\(id)"])
        }
        if expiryChanged || healthChanged || trustChanged {
            try await commit(.upsert(instance))
        } else {
            // Gone from the store: another replica expired it and its event is on its way.
            guard try await stored({ try await store.touchInstance(id: id, at: instance.lastHeartbeat) }) else {
                throw MeshError(.notFound, "instance \(id) is not registered; register again")
            }
            snapshot.instances[id]?.lastHeartbeat = instance.lastHeartbeat
        }
    }

    public func deregister(id: String, service: ServiceName) async throws {
        guard let instance = snapshot.instances[id] else { return }
        guard instance.service == service else {
            throw MeshError(.forbidden, "instance \(id) belongs to service \(instance.service), not \(service)")
        }
        try await commit(.remove(id: id))
        logger.info("instance deregistered", metadata: ["service": "\(service)", "instance": "\(id)"])
    }

    /// Removes instances whose heartbeat (through any replica) is older than the TTL. Only the
    /// replica holding the sweep duty does it. An instance last heard from before this replica
    /// started watching a working store (it took the duty, or the store failed since) may have
    /// been silenced by that outage rather than gone: it gets `sweepGrace` from the start of
    /// the watch to heartbeat again (proxies' heartbeats back off to twice their interval at
    /// most while the control plane fails). One heard from since then has had a whole TTL.
    public func sweep() async {
        guard let since = await store.dutyHeldSince(.sweep) else { return }
        let now = clock()
        let watching = max(since, lastStoreFailure ?? .distantPast)
        let cutoff = now.addingTimeInterval(-heartbeatTTL)
        let graced = now.timeIntervalSince(watching) < sweepGrace
        do {
            for instance in try await stored({ try await store.listInstances() }) where instance.lastHeartbeat < cutoff {
                if graced && instance.lastHeartbeat < watching { continue }
                guard try await stored({ try await store.commitRegistryChange(.expire(id: instance.id, heartbeatBefore: cutoff)) }) != nil
                else { continue }
                logger.info("instance expired (no heartbeat)", metadata: ["service": "\(instance.service)", "instance": "\(instance.id)"])
            }
        } catch {
            // Cancelled (the control plane is stopping): the read was abandoned, nothing failed.
            guard !Task.isCancelled else { return }
            logger.warning("cannot expire instances", metadata: ["error": "\(error)"])
        }
        await catchUp()
    }

    /// Brings the in-memory copy up to the store: new events from the log (ours and other
    /// replicas'), or the whole state when the log no longer reaches back; and the heartbeat
    /// times other replicas recorded, for `mesh services`. Never throws: on a store failure the
    /// copy stays as it is, and proxies keep being served from it.
    public func catchUp(heartbeats: Bool = false) async {
        do {
            if let events = try await stored({ try await store.registryEvents(after: snapshot.version) }) {
                for event in events { publish(event) }
            } else {
                let state = try await stored({ try await store.loadRegistryState() })
                // A concurrent catch-up may have gone further meanwhile.
                if state.version > snapshot.version {
                    reload(Self.snapshot(of: state, defaultPolicy: defaultPolicy))
                }
            }
            if heartbeats {
                for instance in try await stored({ try await store.listInstances() }) {
                    if let known = snapshot.instances[instance.id], known.lastHeartbeat < instance.lastHeartbeat {
                        snapshot.instances[instance.id]?.lastHeartbeat = instance.lastHeartbeat
                    }
                }
            }
        } catch {
            guard !Task.isCancelled else { return } // stopping, not failing
            logger.warning("cannot read the registry from the store; serving the last known one",
                           metadata: ["error": "\(error)", "version": "\(snapshot.version)"])
        }
    }

    /// Follows the store's notifications (other replicas' changes) and resyncs every
    /// `interval` in any case, until cancelled.
    public func follow(interval: Duration) async {
        let notifications = store.registryNotifications()
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { [weak self] in
                for await _ in notifications { await self?.catchUp() }
            }
            tasks.addTask { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    await self?.catchUp(heartbeats: true)
                }
            }
            await tasks.next()
            tasks.cancelAll()
        }
    }

    /// A TTL, and 10 s more for proxies coming back from an outage (see `sweep`).
    private var sweepGrace: TimeInterval { heartbeatTTL + 10 }

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
                Array(snapshot.instances.values), services: snapshot.services.sorted(), policies: snapshot.policies,
                trust: snapshot.trust)))
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
        try await stored { try await store.history(limit: limit) }
    }

    /// Stores `resources` (already validated by the caller) and pushes the new policy set.
    public func apply(_ resources: [MeshResource], actor: String) async throws -> [AuditEntry] {
        let entries = try await stored { try await store.applyResources(resources, actor: actor, at: clock()) }
        if !entries.isEmpty { await announcePolicies() }
        return entries
    }

    public func delete(kind: String, name: String, actor: String) async throws -> AuditEntry? {
        let entry = try await stored { try await store.deleteResource(kind: kind, name: name, actor: actor, at: clock()) }
        if entry != nil { await announcePolicies() }
        return entry
    }

    private func announcePolicies() async {
        await catchUp()
        logger.info("policies changed", metadata: ["policies": "\(snapshot.policies.policies.count)",
                                                   "service_defaults": "\(snapshot.policies.services.count)",
                                                   "version": "\(snapshot.version)"])
    }

    /// Commits a change with its event and brings the copy up to it.
    private func commit(_ change: RegistryChange) async throws {
        _ = try await stored { try await store.commitRegistryChange(change) }
        await catchUp()
    }

    /// Runs a store call, noting when the store fails (and when it works again).
    private func stored<T>(_ call: () async throws -> T) async throws -> T {
        do {
            let result = try await call()
            if storeError != nil {
                logger.notice("the store answers again")
                storeError = nil
                storeFailingSince = nil
            }
            return result
        } catch {
            lastStoreFailure = clock()
            if storeFailingSince == nil { storeFailingSince = clock() }
            storeError = (error as? MeshError)?.message ?? "\(error)"
            throw error
        }
    }

    /// Applies one event from the log and announces it; events at or below the current version
    /// (a concurrent catch-up got there first) are skipped. Runs without suspending.
    private func publish(_ stored: RegistryEvent) {
        guard stored.version > snapshot.version else { return }
        var event = stored
        if case .policies(var set) = event.kind {
            // The log holds the resources; the default mode is this control plane's flag.
            set.defaultMode = defaultPolicy
            event = RegistryEvent(version: event.version, kind: .policies(set))
        }
        snapshot.apply(event)
        if case .trust = event.kind { onTrust?() }
        changeLog.append(event)
        if changeLog.count > changeLogLimit { changeLog.removeFirst(changeLog.count - changeLogLimit) }
        yield(event)
    }

    /// Replaces the copy (after falling behind the store's log) and sends watchers a snapshot.
    private func reload(_ next: RegistrySnapshot) {
        let trust = snapshot.trust
        snapshot = next
        snapshot.trust = trust
        onTrust?()
        changeLog.removeAll()
        logger.notice("reloaded the registry from the store", metadata: ["version": "\(next.version)"])
        yield(RegistryEvent(version: next.version, kind: .snapshot(
            Array(next.instances.values), services: next.services.sorted(), policies: next.policies, trust: trust)))
    }

    private func yield(_ event: RegistryEvent) {
        for (id, watcher) in watchers {
            if case .dropped = watcher.yield(event) {
                watcher.finish()
                watchers[id] = nil
            }
        }
    }
}
