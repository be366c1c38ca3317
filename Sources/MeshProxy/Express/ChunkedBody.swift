/// Finds the end of a chunked body passed on as it comes (RFC 9112 §7.1): chunk sizes in hex
/// with optional extensions, the data and its CRLF, the last chunk, trailer fields, the
/// final CRLF. It reads only what it must to stay in step; the bytes go on unchanged.
struct ChunkedBody {
    private enum State {
        case size(value: Int, digits: Int)
        case extensions
        case sizeLF(last: Bool)
        case data(remaining: Int)
        case dataCR
        case dataLF
        /// In the trailer section: at the start of a line (`empty`) or inside one.
        case trailer(lineStart: Bool)
        case trailerLF(lineWasEmpty: Bool)
        case done
    }

    private var state = State.size(value: 0, digits: 0)
    /// Bytes of chunk data so far (what the full stack counts as the body's size).
    private(set) var dataBytes = 0
    private var lastChunk = false
    /// Bytes of trailer fields so far (bounded like a head).
    private var trailerBytes = 0

    enum Step {
        /// `count` bytes belong to the body; `done` when the body ends with them.
        case consumed(Int, done: Bool)
        case invalid(String)
    }

    /// Advances over `bytes` until the body ends or the bytes run out.
    mutating func advance(_ bytes: UnsafeRawBufferPointer) -> Step {
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            switch state {
            case .size(let value, let digits):
                if let digit = Self.hexValue(byte) {
                    // 15 hex digits: over an exabyte; more is an attack on the arithmetic.
                    guard digits < 15 else { return .invalid("chunk size too long") }
                    state = .size(value: value * 16 + digit, digits: digits + 1)
                    index += 1
                    continue
                }
                guard digits > 0 else { return .invalid("chunk size missing") }
                lastChunk = value == 0
                pendingSize = value
                if byte == UInt8(ascii: ";") || byte == 0x20 || byte == 0x09 {
                    state = .extensions
                } else if byte == UInt8(ascii: "\r") {
                    state = .sizeLF(last: lastChunk)
                } else {
                    return .invalid("chunk size")
                }
                index += 1
            case .extensions:
                if byte == UInt8(ascii: "\r") {
                    state = .sizeLF(last: lastChunk)
                } else if byte < 0x20 && byte != 0x09 || byte == 0x7F {
                    return .invalid("control byte in a chunk extension")
                }
                index += 1
            case .sizeLF(let last):
                guard byte == UInt8(ascii: "\n") else { return .invalid("bare CR after a chunk size") }
                state = last ? .trailer(lineStart: true) : .data(remaining: pendingSize)
                index += 1
            case .data(let remaining):
                let take = min(remaining, bytes.count - index)
                index += take
                dataBytes += take
                state = remaining - take == 0 ? .dataCR : .data(remaining: remaining - take)
            case .dataCR:
                guard byte == UInt8(ascii: "\r") else { return .invalid("chunk data longer than its size") }
                state = .dataLF
                index += 1
            case .dataLF:
                guard byte == UInt8(ascii: "\n") else { return .invalid("bare CR after chunk data") }
                state = .size(value: 0, digits: 0)
                index += 1
            case .trailer(let lineStart):
                trailerBytes += 1
                guard trailerBytes <= 64 * 1024 else { return .invalid("trailer fields too large") }
                if byte == UInt8(ascii: "\r") {
                    state = .trailerLF(lineWasEmpty: lineStart)
                } else if byte < 0x20 && byte != 0x09 || byte == 0x7F {
                    return .invalid("control byte in a trailer field")
                } else {
                    state = .trailer(lineStart: false)
                }
                index += 1
            case .trailerLF(let lineWasEmpty):
                guard byte == UInt8(ascii: "\n") else { return .invalid("bare CR in the trailer section") }
                index += 1
                if lineWasEmpty {
                    state = .done
                    return .consumed(index, done: true)
                }
                state = .trailer(lineStart: true)
            case .done:
                return .consumed(index, done: true)
            }
        }
        if case .done = state { return .consumed(index, done: true) }
        return .consumed(index, done: false)
    }

    /// The size of the chunk whose size line is being read.
    private var pendingSize = 0

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - 0x30)
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - 0x61 + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - 0x41 + 10)
        default: return nil
        }
    }
}
