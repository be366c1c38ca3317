import NIOCore

/// Writes the pieces of an HTTP/1.1 head straight into a `ByteBuffer`'s writable bytes.
///
/// Each of `ByteBuffer`'s own writes checks capacity, unique ownership and exclusive access
/// (about 230 instructions a call, callgrind), and a head took a dozen or more of them: the
/// express path writes every head it sends through one of these instead
/// (``ByteBuffer/writeHead(capacity:_:)``).
struct HeadWriter {
    private let base: UnsafeMutableRawBufferPointer
    /// Bytes written so far; once a piece did not fit, the bytes the whole head needs.
    private(set) var count = 0
    /// Whether a piece did not fit in the room given (the head is written again then).
    private(set) var overflowed = false

    init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if !overflowed, bytes.count <= base.count - count {
            if let source = bytes.baseAddress, let start = base.baseAddress, !bytes.isEmpty {
                (start + count).copyMemory(from: source, byteCount: bytes.count)
            }
        } else {
            // Counted on, so that the second attempt gets all the room the head needs.
            overflowed = true
        }
        count += bytes.count
    }

    mutating func append(_ text: StaticString) {
        append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Named apart from the `StaticString` `append(_:)` so that a literal piece (`": "`, `"\r\n"`)
    /// is a static string, one pointer, and not a `String` (~70 instructions a piece to borrow
    /// its bytes; a head had six literal pieces).
    mutating func append(string text: String) {
        // Borrowed, not copied: `withUTF8` is mutating, and the copy it needs costs a retain
        // and a release of the string's storage (two atomic operations) per piece.
        let written: Void? = text.utf8.withContiguousStorageIfAvailable { append(UnsafeRawBufferPointer($0)) }
        if written == nil {
            var text = text
            text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
        }
    }

    /// `value` in decimal.
    mutating func appendDecimal(_ value: UInt64) {
        // UInt64.max has 20 digits.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var index = digits.count
            var rest = value
            repeat {
                index -= 1
                digits[index] = UInt8(truncatingIfNeeded: rest % 10) &+ UInt8(ascii: "0")
                rest /= 10
            } while rest > 0
            append(UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: digits[index...])))
        }
    }
}

extension ByteBuffer {
    /// Lets `body` write a head at the end of the buffer through a ``HeadWriter`` with room for
    /// `capacity` bytes. Should it write more (the room is the caller's estimate), nothing is
    /// kept and `body` runs once more with the room the head turned out to need.
    mutating func writeHead(capacity: Int, _ body: (inout HeadWriter) -> Void) {
        var room = Swift.max(capacity, 64)
        while true {
            var needed = 0
            writeWithUnsafeMutableBytes(minimumWritableBytes: room) { raw in
                var writer = HeadWriter(raw)
                body(&writer)
                needed = writer.overflowed ? writer.count : 0
                return writer.overflowed ? 0 : writer.count
            }
            if needed == 0 { return }
            room = Swift.max(room * 2, needed)
        }
    }
}
