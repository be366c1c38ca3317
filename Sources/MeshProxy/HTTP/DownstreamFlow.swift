import MeshTransport
import NIOCore
import NIOHTTP1

/// The state a downstream HTTP/1.1 connection keeps besides its exchange: requests a client
/// pipelined behind the current one, the last time anything was read or written (the idle
/// timeout), and why reading is paused. Its extension on ``ProxyHTTPHandler`` also holds
/// when each direction is flushed.
///
/// This replaces `HTTPServerPipelineHandler`, `IdleStateHandler` and the parse-error
/// responder in the data path. Those sat in the pipeline and saw every read and write; the
/// pipeline handler also turned reading off and on around every request (two `epoll_ctl`
/// calls per request). Here, reading stops only when a client actually pipelines.
struct DownstreamFlow {
    /// Why reading is paused; it resumes when no reason is left.
    struct Pause: OptionSet {
        let rawValue: UInt8
        /// The body waiting for an upstream connection reached its limit.
        static let pendingBody = Pause(rawValue: 1)
        /// A pipelined request waits for the current exchange to end.
        static let pipelined = Pause(rawValue: 2)
        /// The upstream connection is not taking the request's body as fast as it comes.
        static let upstreamFull = Pause(rawValue: 4)
    }

    /// At most this many bytes (bodies, and 64 per head) and this many requests are held: a
    /// client that pipelines more is closed. Reading stops at the first pipelined head, so
    /// only the rest of that read can arrive (NIO reads up to four buffers per readiness).
    static let maxHeldBytes = 1 << 20
    static let maxHeldRequests = 128

    let idleTimeout: TimeAmount?
    var lastActivity: UInt64 = 0
    var idleTimer: Scheduled<Void>?
    var paused: Pause = []
    private(set) var held = CircularBuffer<HTTPServerRequestPart>()
    private var heldBytes = 0
    private var heldRequests = 0
    /// A parse error behind held requests (or behind the current one, once it has been
    /// read whole): answered in its turn, after the answers before it.
    var heldError: HTTPParserError?
    var drainScheduled = false

    init(idleTimeout: TimeAmount?) {
        self.idleTimeout = idleTimeout
    }

    /// Something was read or written now.
    mutating func touch() {
        if idleTimeout != nil { lastActivity = Exchange.now() }
    }

    /// Whether a part must wait: a head while an exchange is open, and everything behind a
    /// held part (the order of parts is the order of requests).
    func mustHold(_ part: HTTPServerRequestPart, exchangeOpen: Bool) -> Bool {
        if !held.isEmpty || heldError != nil { return true }
        if case .head = part { return exchangeOpen }
        return false
    }

    /// Holds a part; false when the held requests are over the limit.
    mutating func hold(_ part: HTTPServerRequestPart) -> Bool {
        heldBytes += Self.weight(part)
        if case .head = part { heldRequests += 1 }
        guard heldBytes <= Self.maxHeldBytes, heldRequests <= Self.maxHeldRequests else { return false }
        held.append(part)
        return true
    }

    mutating func takeHeld() -> HTTPServerRequestPart? {
        guard let part = held.popFirst() else { return nil }
        heldBytes -= Self.weight(part)
        if case .head = part { heldRequests -= 1 }
        return part
    }

    mutating func dropHeld() {
        held.removeAll()
        heldBytes = 0
        heldRequests = 0
        heldError = nil
    }

    private static func weight(_ part: HTTPServerRequestPart) -> Int {
        switch part {
        case .head: return 64
        case .body(let chunk): return chunk.readableBytes
        case .end: return 0
        }
    }
}

extension ProxyHTTPHandler {
    func pauseReading(_ reason: DownstreamFlow.Pause) {
        guard !flow.paused.contains(reason) else { return }
        let wasReading = flow.paused.isEmpty
        flow.paused.insert(reason)
        if wasReading, let context { setAutoRead(false, context.channel) }
    }

    func resumeReading(_ reason: DownstreamFlow.Pause) {
        guard flow.paused.contains(reason) else { return }
        flow.paused.remove(reason)
        if flow.paused.isEmpty, let context { setAutoRead(true, context.channel) }
    }

    /// Stops or restarts reading a channel of this event loop: the caller's connection or
    /// stream, or an upstream one. A socket channel asks for a read itself when auto-read
    /// comes back on; an HTTP/2 stream channel only sets the flag, and the frames it held stay
    /// held (an upload or a download through an HTTP/2 hop hung for good once its stream had
    /// been paused), so a read is asked for here. Asking twice is harmless.
    func setAutoRead(_ on: Bool, _ channel: Channel) {
        if let options = channel.syncOptions {
            try? options.setOption(ChannelOptions.autoRead, value: on)
        } else {
            channel.setOption(ChannelOptions.autoRead, value: on).whenComplete { _ in }
        }
        if on { channel.read() }
    }

    // Flushes: once per read in each direction, so that a request's or a response's parts of
    // one read leave together, and a streamed body moves as it arrives.

    func channelReadComplete(context: ChannelHandlerContext) {
        inRead = false
        if let channel = unflushedUpstream {
            unflushedUpstream = nil
            channel.flush()
        }
        context.fireChannelReadComplete()
    }

    /// Flushes what was written to `channel` now, or at the end of the current read.
    func flushUpstream(_ channel: Channel) {
        guard inRead else {
            channel.flush()
            return
        }
        if let other = unflushedUpstream, other !== channel { other.flush() }
        unflushedUpstream = channel
    }

    func upstreamReadComplete() {
        guard downstreamUnflushed, let context else { return }
        downstreamUnflushed = false
        context.flush()
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        guard case .forwarding = state else { return }
        if writable { resumeReading(.upstreamFull) } else { pauseReading(.upstreamFull) }
    }

    /// The current request has been read to its end and answered (or its answer is under
    /// way): the header clock restarts, and a pipelined request is taken on — after this
    /// call's own writes, so that answers leave in the order of the requests.
    func requestDone() {
        headerTimer?.awaitNextRequest()
        // The connection closes after this answer: what was pipelined behind it is not sent
        // upstream (it would have effects and no answer).
        if !keepAlive { flow.dropHeld() }
        guard !flow.held.isEmpty || flow.heldError != nil, !flow.drainScheduled, let context else { return }
        flow.drainScheduled = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute { bound.value.drainHeld() }
    }

    private func drainHeld() {
        flow.drainScheduled = false
        guard let context else { return }
        // Parts of the next request go on until its exchange is open and another head waits.
        while let next = flow.held.first {
            if case .head = next, exchangeOpen { return }
            guard let part = flow.takeHeld() else { break }
            handle(part, context: context)
        }
        if let error = flow.heldError {
            // Its turn comes once the answers before it are out.
            guard !exchangeOpen else { return }
            flow.heldError = nil
            answerParseError(error, context: context)
            return
        }
        resumeReading(.pipelined)
    }

    /// Closes the connection after `idleTimeout` without a read or a write. One timer per
    /// connection, moved on lazily: activity only stamps the time, and the timer, when it
    /// fires early, waits for the rest.
    func armIdleTimer(_ context: ChannelHandlerContext) {
        guard let timeout = flow.idleTimeout else { return }
        flow.touch()
        scheduleIdleCheck(in: timeout, context: context)
    }

    private func scheduleIdleCheck(in delay: TimeAmount, context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        flow.idleTimer = context.eventLoop.scheduleTask(in: delay) {
            let handler = bound.value
            guard let context = handler.context, let timeout = handler.flow.idleTimeout else { return }
            let idle = Int64(Exchange.now() &- handler.flow.lastActivity)
            if idle >= timeout.nanoseconds {
                context.close(promise: nil)
            } else {
                handler.scheduleIdleCheck(in: .nanoseconds(timeout.nanoseconds - idle), context: context)
            }
        }
    }

    /// The decoder cannot read a request. Behind a request still being answered, the error
    /// waits its turn (``drainHeld``); otherwise it is answered now.
    func parseFailed(_ error: HTTPParserError, context: ChannelHandlerContext) {
        if parseErrorWaits {
            flow.heldError = error
            pauseReading(.pipelined)
        } else {
            answerParseError(error, context: context)
        }
    }

    /// Whether a parse error comes after the current request was read whole (or behind held
    /// ones), so that the answers before it must go out first.
    private var parseErrorWaits: Bool {
        if !flow.held.isEmpty { return true }
        switch state {
        case .connecting(_, _, let ended): return ended
        case .forwarding(_, let ended, _): return ended
        case .idle, .discarding, .upgraded: return false
        }
    }

    /// Answers a parse error (``HTTPParseErrorResponder/answer(to:)``) and closes. Inside a
    /// request being forwarded or already answered there is no way to send a status: it
    /// just closes.
    private func answerParseError(_ error: HTTPParserError, context: ChannelHandlerContext) {
        flow.dropHeld()
        if case .idle = state {
            let (head, body) = HTTPParseErrorResponder.answer(to: error)
            state = .discarding
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.close(promise: nil)
    }
}
