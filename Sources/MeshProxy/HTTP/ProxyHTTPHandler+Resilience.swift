import Foundation
import MeshCore
import NIOCore
import NIOHTTP1

/// Timeouts and retries of the caller's proxy, as the destination's `TrafficPolicy` says.
/// Everything runs on the connection's event loop; timers and scheduled retries carry the
/// exchange's serial number and attempt, so that one outliving its exchange does nothing.
extension ProxyHTTPHandler {
    /// Starts the request timer (whole exchange, retries included) and the first try's timer.
    func armTimers(_ policy: TrafficPolicy.Effective, context: ChannelHandlerContext) {
        cancelTimers()
        if policy.requestTimeoutSeconds > 0 {
            let serial = self.serial
            requestTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(policy.requestTimeoutSeconds * 1e9))) { [self] in
                guard self.serial == serial else { return }
                timedOut("request-timeout", retryable: false)
            }
        }
        armTryTimer(policy)
    }

    func armTryTimer(_ policy: TrafficPolicy.Effective) {
        tryTimer?.cancel()
        tryTimer = nil
        guard policy.perTryTimeoutSeconds > 0, let context else { return }
        let (serial, attempt) = (self.serial, exchange.attempt)
        tryTimer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(policy.perTryTimeoutSeconds * 1e9))) { [self] in
            guard self.serial == serial, exchange.attempt == attempt else { return }
            timedOut("per-try-timeout", retryable: true)
        }
    }

    func cancelTimers() {
        requestTimer?.cancel()
        tryTimer?.cancel()
        requestTimer = nil
        tryTimer = nil
    }

    /// A timer ran out before the exchange ended: try again if allowed, else answer 504 with
    /// the reason (or, once the response has started, close: nothing else can be said).
    private func timedOut(_ kind: String, retryable: Bool) {
        guard let context, let loopState else { return }
        if let destination = exchange.route?.service { loopState.countResilience("timeout", destination: destination, reason: kind) }
        let limit = kind == "request-timeout" ? exchange.settings?.requestTimeoutSeconds : exchange.settings?.perTryTimeoutSeconds
        let message = "no response within \(limit.map { "\($0)" } ?? "?") s (\(kind == "request-timeout" ? "timeouts.request" : "timeouts.perTry") of the destination's TrafficPolicy)"
        switch state {
        case .connecting(let pending, let bytes, let ended):
            if retryable, retry(kind, upstream: nil, pending: (pending, bytes, ended)) { return }
            finishExchange()
            state = ended ? .idle : .discarding
            // Reading may be paused on a full pending body: the rest must still be read (and dropped).
            resumeReading(context)
            writeLocalResponse(.gatewayTimeout, code: kind, message: message, context: context)
            if ended { requestDone() }
        case .forwarding(let upstream, let ended, let started):
            if started {
                upstream.handler.responder = nil
                upstream.channel.close(promise: nil)
                finishExchange()
                exchange.status = 0
                recordExchange()
                state = .idle
                context.close(promise: nil)
                return
            }
            if retryable, ended, retry(kind, upstream: upstream) { return }
            upstream.handler.responder = nil
            upstream.channel.close(promise: nil)
            finishExchange()
            state = ended ? .idle : .discarding
            writeLocalResponse(.gatewayTimeout, code: kind, message: message, context: context)
            if ended { requestDone() }
        case .idle, .discarding, .upgraded:
            return
        }
    }

    /// Sends the request again, to another endpoint when there is one, after a jittered
    /// backoff — if the policy has attempts left, the request is at hand (held while
    /// connecting, or kept whole for replay: idempotent, or allowed by the policy, and at most
    /// 64 KiB) and the retry budget has room. Returns false when it does not retry.
    func retry(_ reason: String, upstream: UpstreamConnection?,
               pending held: (parts: [HTTPServerRequestPart], bytes: Int, ended: Bool)? = nil) -> Bool {
        guard let route = exchange.route, let loopState, let context else { return false }
        let policy = route.settings(route: exchange.matchedRoute)
        guard exchange.attempt <= policy.retryAttempts else { return false }
        let request: (parts: [HTTPServerRequestPart], bytes: Int, ended: Bool)
        if let held {
            request = held
        } else if let replay {
            request = (replay, replayBytes, true)
        } else {
            return false
        }
        guard route.budget.withdraw(now: Exchange.now(), percent: policy.budgetPercent, minPerSecond: policy.budgetMinPerSecond) else {
            loopState.countResilience("retry", destination: route.service, reason: "budget-exhausted")
            return false
        }
        loopState.countResilience("retry", destination: route.service, reason: reason)
        if let upstream {
            upstream.handler.responder = nil
            upstream.channel.close(promise: nil)
        }
        exchange.settleEndpoint(failed: true, logger: logger)
        tryTimer?.cancel()
        tryTimer = nil
        exchange.attempt += 1
        exchange.upstreamStart = 0
        exchange.responseHead = 0
        exchange.status = 0
        exchange.peer = nil
        exchange.responseBytes = 0
        state = .connecting(pending: request.parts, pendingBytes: request.bytes, requestEnded: request.ended)
        exchange.enterPending()
        // Exponential backoff with full jitter: retries of many callers do not line up.
        let ceiling = min(policy.backoffMaxSeconds, policy.backoffBaseSeconds * pow(2, Double(exchange.attempt - 2)))
        let delay = Double(loopState.random.below(1_000_000)) / 1_000_000 * ceiling
        let (serial, attempt, avoiding) = (self.serial, exchange.attempt, exchange.lastKey)
        logger.debug("retrying", metadata: ["destination": "\(route.service)", "reason": "\(reason)", "attempt": "\(attempt)"])
        context.eventLoop.scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) { [self] in
            guard self.serial == serial, exchange.attempt == attempt, case .connecting = state, let loop = self.loopState, let channelContext = self.context else { return }
            let candidates = route.pick(now: Exchange.now(), random: &loop.random, avoiding: avoiding, subset: exchange.subset)
            guard !candidates.isEmpty else {
                finishExchange()
                var ended = false
                if case .connecting(_, _, let requestEnded) = state {
                    ended = requestEnded
                    state = ended ? .idle : .discarding
                }
                resumeReading(channelContext)
                writeLocalResponse(.serviceUnavailable, code: "no-endpoints",
                                   message: "service '\(route.service)' has no endpoints left to retry on", context: channelContext)
                if ended { requestDone() }
                return
            }
            armTryTimer(policy)
            connect(candidates[...], loopState: loop, fresh: upgrading)
        }
        return true
    }
}
