import NIOCore

/// What a connection from the local app speaks, told from its first bytes.
enum DetectedProtocol: Equatable {
    case http1
    /// HTTP/2 with prior knowledge (the connection preface).
    case http2
    /// Anything else, or nothing within the detection timeout (a server-first protocol, where
    /// the client waits for the server to speak first).
    case opaque
}

extension DetectedProtocol {
    /// The HTTP/2 connection preface (RFC 9113 §3.4).
    static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// The protocol `bytes` begin with, or nil when more bytes are needed to tell.
    /// HTTP/1 is a method token (upper-case letters, at most 16) and a space; the HTTP/2
    /// preface starts like an HTTP/1 request with method `PRI`, so it is checked first.
    static func detect<Bytes: Collection>(_ bytes: Bytes) -> DetectedProtocol? where Bytes.Element == UInt8 {
        if bytes.isEmpty { return nil }
        let preface = http2Preface
        if bytes.starts(with: preface.prefix(bytes.count)) {
            return bytes.count >= preface.count ? .http2 : nil
        }
        var length = 0
        for byte in bytes {
            if byte == UInt8(ascii: " ") { return length > 0 ? .http1 : .opaque }
            guard (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) || byte == UInt8(ascii: "-") else { return .opaque }
            length += 1
            if length > 16 { return .opaque }
        }
        return nil
    }
}

/// Holds the first bytes of a connection until ``DetectedProtocol/detect(_:)`` can tell the
/// protocol, or until `timeout` (then: opaque, so a server-first protocol never hangs);
/// then hands the connection to `decided` with the bytes read so far, and steps aside.
/// A service declared `appProtocol: tcp` skips this handler altogether.
final class ProtocolDetectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Configures the pipeline for the protocol; called once, on the event loop. The bytes are
    /// fired after it returns, into whatever handlers it added after this one.
    typealias Decided = (ChannelHandlerContext, DetectedProtocol, ByteBuffer) throws -> Void

    private let timeout: TimeAmount
    private let decided: Decided
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var done = false

    init(timeout: TimeAmount, decided: @escaping Decided) {
        self.timeout = timeout
        self.decided = decided
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.finish(context: context, as: .opaque, endsRead: true)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard !done else {
            context.fireChannelRead(wrapInboundOut(bytes))
            return
        }
        if buffered == nil {
            buffered = bytes
        } else {
            buffered?.writeBuffer(&bytes)
        }
        if let detected = buffered.flatMap({ DetectedProtocol.detect($0.readableBytesView) }) {
            finish(context: context, as: detected)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        done = true
        context.fireChannelInactive()
    }

    /// - Parameter endsRead: the bytes are handed on outside a read (the timer ran out), so
    ///   a read-complete follows them: handlers that act at the end of a read (the request
    ///   header timer) must see one.
    private func finish(context: ChannelHandlerContext, as detected: DetectedProtocol, endsRead: Bool = false) {
        guard !done else { return }
        done = true
        timer?.cancel()
        timer = nil
        let bytes = buffered ?? context.channel.allocator.buffer(capacity: 0)
        buffered = nil
        do {
            try decided(context, detected, bytes)
            if bytes.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(bytes))
                if endsRead { context.fireChannelReadComplete() }
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }
}
