#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Prometheus
import Synchronization

/// Opt-in access log: one JSON object per line, to standard output or a file.
///
/// The data path never waits for it: lines go into a bounded buffer (``capacity`` bytes)
/// that a thread of its own writes out every 50 ms. When the buffer is full (a slow disk, a
/// stalled pipe) new lines are dropped and counted in ``dropped``, rather than slowing or
/// growing the proxy.
public final class AccessLog: Sendable {
    /// Bytes waiting to be written, at most.
    public static let capacity = 4 << 20

    private struct Pending: ~Copyable {
        var bytes: [UInt8] = []
        var dropped = 0
        var closed = false
    }
    private let pending = Mutex(Pending())
    /// Signalled by the writer thread once it has written the last lines and closed the file.
    private let finished = DispatchSemaphore(value: 0)
    private let descriptor: Int32
    private let ownsDescriptor: Bool
    /// Where the lines go, as given.
    public let destination: String
    /// Counts dropped lines on `/metrics` as well.
    private let droppedCounter: Counter?

    /// - Parameter destination: `stdout`, or a file path (created 0640 if missing, appended).
    /// - Throws: a description that names the file and the reason.
    public init(destination: String, metrics: ProxyMetrics? = nil) throws(AccessLogError) {
        self.destination = destination
        self.droppedCounter = metrics?.accessLogDropped()
        if destination == "stdout" || destination == "-" {
            descriptor = STDOUT_FILENO
            ownsDescriptor = false
        } else {
            let fd = open(destination, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                throw AccessLogError(message: "cannot open the access log \(destination): \(String(cString: strerror(errno))); give a writable file or 'stdout'")
            }
            descriptor = fd
            ownsDescriptor = true
        }
        let thread = WriterThread(log: self)
        thread.start()
    }

    /// Appends one line (without its newline); drops it if the buffer is full.
    public func write(_ line: [UInt8]) {
        pending.withLock { state in
            guard !state.closed, state.bytes.count + line.count + 1 <= Self.capacity else {
                state.dropped += 1
                droppedCounter?.increment()
                return
            }
            state.bytes.append(contentsOf: line)
            state.bytes.append(UInt8(ascii: "\n"))
        }
    }

    /// Lines dropped because the buffer was full.
    public var dropped: Int { pending.withLock { $0.dropped } }

    /// Stops accepting lines, lets the writer thread write what is buffered and close the
    /// file, and waits for it (at most a second), so that no line is lost and no write can
    /// reach a descriptor that was closed (and perhaps reused).
    public func close() {
        let first = pending.withLock { state -> Bool in
            defer { state.closed = true }
            return !state.closed
        }
        guard first else { return }
        _ = finished.wait(timeout: .now() + .seconds(1))
    }

    /// Writes out everything buffered; returns false once the log is closed (after writing
    /// the last lines and closing the file).
    @discardableResult
    func flush() -> Bool {
        var bytes: [UInt8] = []
        let closed = pending.withLock { state -> Bool in
            swap(&bytes, &state.bytes)
            return state.closed
        }
        writeOut(bytes)
        if closed {
            if ownsDescriptor { _ = systemClose(descriptor) }
            finished.signal()
            return false
        }
        return true
    }

    private func writeOut(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return systemWrite(descriptor, base + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                // A closed pipe or full disk: what cannot be written is dropped, not retried forever.
                pending.withLock { $0.dropped += 1 }
                droppedCounter?.increment()
                break
            }
            offset += written
        }
    }
}

#if canImport(Glibc)
private let systemWrite = Glibc.write
private let systemClose = Glibc.close
#elseif canImport(Darwin)
private let systemWrite = Darwin.write
private let systemClose = Darwin.close
#endif

/// The access log could not be opened.
public struct AccessLogError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// The access log's own thread: flushes every 50 ms until the log is closed, so that file
/// writes never run on an event loop or in the cooperative pool.
private final class WriterThread: Sendable {
    private let log: AccessLog
    init(log: AccessLog) { self.log = log }

    func start() {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let writer = Unmanaged<WriterThread>.fromOpaque(argument).takeRetainedValue()
            writer.loop()
            return nil
        }, box.toOpaque())
        if result == 0 {
            pthread_detach(thread)
        } else {
            box.release()
        }
    }

    private func loop() {
        while log.flush() {
            usleep(50_000)
        }
    }
}
