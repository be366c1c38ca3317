import Foundation
import MeshCore
import MeshTransport
import NIOCore

/// `mesh tap`: the open tap sessions, the proxies' watch streams that carry the tap orders
/// to them, and the fan-out of what they sample to the sessions.
///
/// Bounded everywhere: at most 16 sessions, each with a buffer of 1024 lines (the oldest go
/// when an operator's terminal cannot keep up, and are counted as dropped); proxies send at
/// most `rate` requests per second each, and forget an order 30 s after they last heard of
/// it, so a crashed control plane leaves nobody sampling.
public actor TapHub {
    private struct Session {
        var service: ServiceName
        var order: TapOrder
        var continuation: AsyncStream<ByteBuffer>.Continuation
        /// Events left before the stream ends (nil: until the client goes).
        var remaining: Int?
        var skipped: UInt64 = 0
        var dropped: UInt64 = 0
        /// Per proxy instance, the session's own rate budget: proxies sample at the highest
        /// rate among the open taps of their service, so a slower tap is held to its own here.
        var budgets: [String: (tokens: Double, at: ContinuousClock.Instant)] = [:]

        /// Takes one event of `instance` from the budget; false when over the rate.
        mutating func admit(_ instance: String, now: ContinuousClock.Instant) -> Bool {
            let rate = Double(order.maxPerSecond)
            if budgets.count > 10_000 { budgets.removeAll() }
            var budget = budgets[instance] ?? (rate, now)
            let elapsed = now - budget.at
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            budget = (min(rate, budget.tokens + seconds * rate), now)
            guard budget.tokens >= 1 else {
                budgets[instance] = budget
                return false
            }
            budgets[instance] = (budget.tokens - 1, now)
            return true
        }
    }
    private var sessions: [String: Session] = [:]
    private var watchers: [UUID: (service: ServiceName, continuation: AsyncStream<[TapOrder]>.Continuation)] = [:]
    public static let maxSessions = 16
    /// How long proxies keep an order; the hub renews them three times as often.
    static let orderTTL = 30.0

    public init() {}

    /// Opens a tap of `service`: the stream of JSON lines for the admin client, starting with
    /// a status line. The tap ends when the client goes (the stream is dropped) or after
    /// `limit` requests.
    func open(service: ServiceName, order: TapOrder, limit: Int?) throws -> AsyncStream<ByteBuffer> {
        guard sessions.count < Self.maxSessions else {
            throw MeshError(.unavailable, "\(Self.maxSessions) taps are open already; end one (Ctrl-C) and try again")
        }
        let (stream, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let id = order.id
        sessions[id] = Session(service: service, order: order, continuation: continuation, remaining: limit)
        continuation.onTermination = { [weak self] _ in
            Task { await self?.close(id) }
        }
        sendStatus(id)
        pushOrders(for: service)
        return stream
    }

    private func close(_ id: String) {
        guard let session = sessions.removeValue(forKey: id) else { return }
        session.continuation.finish()
        pushOrders(for: session.service)
    }

    /// The tap orders for one proxy's watch stream: the current set at once when there is a
    /// tap (a proxy that reconnects after a tap ended stops by its lease, 30 s), then every
    /// change. Untapped services' proxies never get a tap message.
    func orders(for service: ServiceName) -> AsyncStream<[TapOrder]> {
        let (stream, continuation) = AsyncStream<[TapOrder]>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = UUID()
        watchers[id] = (service, continuation)
        continuation.onTermination = { [weak self] _ in
            Task { await self?.removeWatcher(id) }
        }
        let current = orders(of: service)
        if !current.isEmpty { continuation.yield(current) }
        return stream
    }

    private func removeWatcher(_ id: UUID) { watchers[id] = nil }

    private func orders(of service: ServiceName) -> [TapOrder] {
        sessions.values.filter { $0.service == service }.map(\.order).sorted { $0.id < $1.id }
    }

    private func pushOrders(for service: ServiceName) {
        let current = orders(of: service)
        for watcher in watchers.values where watcher.service == service { watcher.continuation.yield(current) }
    }

    /// Every 2 s: a status line to every session (it also keeps idle connections checked);
    /// every `renewEvery`-th call, the orders again so that proxies keep sampling.
    func tick(renew: Bool) {
        for id in sessions.keys { sendStatus(id) }
        if renew {
            for service in Set(sessions.values.map(\.service)) { pushOrders(for: service) }
        }
    }

    private func sendStatus(_ id: String) {
        guard let session = sessions[id] else { return }
        let proxies = watchers.values.filter { $0.service == session.service }.count
        send(TapStatus(proxies: proxies, skipped: session.skipped, dropped: session.dropped), to: id)
    }

    private func send(_ line: some Encodable, to id: String) {
        guard let session = sessions[id], var data = try? JSONCoding.encoder.encode(line) else { return }
        data.append(UInt8(ascii: "\n"))
        if case .dropped = session.continuation.yield(ByteBuffer(bytes: data)) {
            sessions[id]?.dropped += 1
        }
    }

    /// A batch from a proxy of `service` (already checked to be that proxy's own requests):
    /// each session of the service gets the events its filter asks for.
    func publish(_ batch: TapBatch, from service: ServiceName) {
        for (id, session) in sessions where session.service == service {
            // Counts come from the proxy: added without ever trapping.
            sessions[id]?.skipped = session.skipped.addingReportingOverflow(batch.skipped).overflow ? .max : session.skipped + batch.skipped
            sessions[id]?.dropped = session.dropped.addingReportingOverflow(batch.dropped).overflow ? .max : session.dropped + batch.dropped
            for var event in batch.events
            where session.order.matches(source: event.source, destination: event.destination, method: event.method, path: event.path) {
                guard var current = sessions[id] else { break }
                guard current.admit(batch.instanceID, now: .now) else {
                    current.skipped += 1
                    sessions[id] = current
                    continue
                }
                sessions[id] = current
                event.instance = batch.instanceID
                send(event, to: id)
                if let remaining = current.remaining {
                    sessions[id]?.remaining = remaining - 1
                    if remaining <= 1 {
                        close(id)
                        break
                    }
                }
            }
        }
    }

    /// Whether any session taps `service` (batches for others are refused).
    func isTapped(_ service: ServiceName) -> Bool {
        sessions.values.contains { $0.service == service }
    }
}
