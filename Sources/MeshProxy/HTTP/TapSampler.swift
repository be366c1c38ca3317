import Foundation
import MeshCore
import MeshTelemetry

/// One event loop's part of `mesh tap`: which requests the taps of this service ask for, a
/// token bucket that bounds how many this loop sends, and a bounded buffer that the
/// ``TapReporter`` empties. Only touched on its loop. Nil in ``LoopState`` when no tap is
/// open, which costs the data path one branch.
final class TapSampler {
    private(set) var orders: [TapOrder]
    /// Uptime nanoseconds after which the orders lapse unless the control plane renews them.
    private var deadline: UInt64
    private var ratePerSecond: Double
    private var tokens: Double
    private var refilled: UInt64
    private var events: [TapEvent] = []
    private var skipped: UInt64 = 0
    private var dropped: UInt64 = 0
    /// Events held between two reports (a quarter of a second) at most.
    static let capacity = 256

    init(orders: [TapOrder], loops: Int, now: UInt64) {
        self.orders = orders
        deadline = now
        ratePerSecond = 1
        tokens = 1
        refilled = now
        update(orders: orders, loops: loops, now: now)
    }

    /// Takes a renewed or changed set of orders, keeping what is buffered.
    func update(orders: [TapOrder], loops: Int, now: UInt64) {
        self.orders = orders
        let ttl = min(max(orders.map(\.ttlSeconds).min() ?? 30, 1), 120)
        deadline = now &+ UInt64(ttl * 1e9)
        // The rate is per proxy; each loop takes its share (a sidecar usually has one loop).
        let rate = Double(min(max(orders.map(\.maxPerSecond).max() ?? 1, 1), TapOrder.maxRate))
        ratePerSecond = rate / Double(max(loops, 1))
        tokens = min(tokens, max(ratePerSecond, 1))
    }

    func isOn(_ now: UInt64) -> Bool { now < deadline }

    func wants(source: String, destination: String, method: String, path: String) -> Bool {
        orders.contains { $0.matches(source: source, destination: destination, method: method, path: path) }
    }

    /// Keeps the event `make` builds if the rate allows (built only then); counts it as
    /// skipped otherwise, or as dropped when the buffer is full.
    func offer(now: UInt64, _ make: () -> TapEvent) {
        let elapsed = Double(now &- refilled) / 1e9
        refilled = now
        tokens = min(max(ratePerSecond, 1), tokens + elapsed * ratePerSecond)
        guard tokens >= 1 else {
            skipped += 1
            return
        }
        tokens -= 1
        guard events.count < Self.capacity else {
            dropped += 1
            return
        }
        events.append(make())
    }

    /// Everything sampled since the last call, and the counts of what was left out.
    func take() -> (events: [TapEvent], skipped: UInt64, dropped: UInt64) {
        defer {
            events.removeAll(keepingCapacity: true)
            skipped = 0
            dropped = 0
        }
        return (events, skipped, dropped)
    }
}

extension Exchange {
    /// This exchange as a line of `mesh tap`.
    func tapEvent(_ labels: EdgeLabels, _ log: LogContext) -> TapEvent {
        let plaintextCaller = labels.direction == .inbound && !labels.tls
        var event = TapEvent(
            at: Date(), direction: labels.direction.rawValue,
            source: plaintextCaller ? "unauthenticated" : labels.sourceService, sourceIdentity: labels.sourceIdentity,
            destination: labels.destinationService, method: TapEvent.printable(log.method, maxBytes: 32),
            path: TapEvent.printable(log.path, maxBytes: 512), status: status,
            tls: labels.tls, durationMs: Double(duration) / 1e6, requestBytes: requestBytes, responseBytes: responseBytes)
        event.decision = log.decision
        event.policy = log.policy
        event.requestID = log.requestID
        event.traceID = log.traceID
        if let split = hopSplit() {
            event.hopsMs = Dictionary(uniqueKeysWithValues: zip(["caller_proxy", "network", "peer_proxy", "app"], split.nanos.map { Double($0) / 1e6 }))
        } else if labels.direction == .inbound, upstreamStart > 0, responseHead >= upstreamStart {
            event.hopsMs = ["proxy": Double(upstreamStart &- start) / 1e6, "app": Double(responseHead - upstreamStart) / 1e6]
        }
        return event
    }
}
