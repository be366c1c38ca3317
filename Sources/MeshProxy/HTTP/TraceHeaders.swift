import NIOHTTP1
import Tracing

/// Reads trace context from request headers for the tracer.
struct HTTPHeadersExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? {
        carrier.first(name: key)
    }
}

/// Writes trace context into the request the proxy forwards.
struct HTTPHeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) {
        carrier.replaceOrAdd(name: key, value: value)
    }
}

/// B3 trace context (Zipkin; the single `b3` header or the `x-b3-*` set) as a W3C
/// `traceparent`, so that callers instrumented with B3 join the same traces. Output is W3C only.
enum B3 {
    static func traceparent(from headers: HTTPHeaders) -> String? {
        var traceID: Substring?
        var spanID: Substring?
        var sampled: Substring?
        if let single = headers.first(name: "b3") {
            let parts = single.split(separator: "-")
            guard parts.count >= 2 else { return nil }
            (traceID, spanID, sampled) = (parts[0], parts[1], parts.count > 2 ? parts[2] : nil)
        } else if let id = headers.first(name: "x-b3-traceid"), let span = headers.first(name: "x-b3-spanid") {
            (traceID, spanID, sampled) = (Substring(id), Substring(span), headers.first(name: "x-b3-sampled").map { Substring($0) })
        }
        guard let traceID, let spanID, traceID.count == 16 || traceID.count == 32, spanID.count == 16,
              isHex(traceID), isHex(spanID) else { return nil }
        // No decision (deferred) counts as sampled: the caller's tracer wants the trace.
        let flags = sampled == "0" ? "00" : "01"
        return "00-\(String(repeating: "0", count: 32 - traceID.count))\(traceID.lowercased())-\(spanID.lowercased())-\(flags)"
    }

    private static func isHex(_ text: Substring) -> Bool {
        text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || (65...70).contains($0) }
            && text.contains { $0 != "0" }
    }
}

/// W3C `traceparent` values (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) read and
/// made without the tracer, for requests that are not sampled: they cost no span.
enum TraceParent {
    /// The sampled flag of a well-formed `traceparent`; nil when malformed (then the caller's
    /// context is ignored, as the W3C specification asks). One pass over the bytes in place:
    /// a proxy with tracing on reads one on nearly every request.
    static func sampled(_ value: String) -> Bool? {
        // Header values are native strings, contiguous: the fallback copy is never taken.
        value.utf8.withContiguousStorageIfAvailable { sampled(bytes: $0) }
            ?? Array(value.utf8).withUnsafeBufferPointer { sampled(bytes: $0) }
    }

    /// The trace id (32 hex digits) of a well-formed `traceparent`.
    static func traceID(of value: String) -> String {
        String(decoding: value.utf8.dropFirst(3).prefix(32), as: UTF8.self)
    }

    private static func sampled(bytes: UnsafeBufferPointer<UInt8>) -> Bool? {
        let dash = UInt8(ascii: "-"), zero = UInt8(ascii: "0"), f = UInt8(ascii: "f")
        guard bytes.count >= 55, bytes[2] == dash, bytes[35] == dash, bytes[52] == dash,
              !(bytes[0] == f && bytes[1] == f) else { return nil }
        // Version 00 is exactly 55 bytes; later versions may append fields.
        if bytes[0] == zero && bytes[1] == zero && bytes.count != 55 { return nil }
        guard isLowerHex(bytes[0]), isLowerHex(bytes[1]), isLowerHex(bytes[53]), isLowerHex(bytes[54]),
              let traceID = hexOr(bytes, 3..<35), let spanID = hexOr(bytes, 36..<52),
              // All-zero trace and span ids are invalid.
              traceID != 0, spanID != 0 else { return nil }
        // The sampled flag is the flags' lowest bit: that of the last hex digit's value.
        let last = bytes[54]
        return (last <= UInt8(ascii: "9") ? last &- zero : last &- UInt8(ascii: "a") &+ 10) & 1 == 1
    }

    /// The bytes in `range` OR-ed together minus '0' (zero when they are all '0'); nil when
    /// one is not a lowercase hex digit.
    @inline(__always)
    private static func hexOr(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt8? {
        var folded: UInt8 = 0
        var index = range.lowerBound
        while index < range.upperBound {
            let byte = bytes[index]
            guard isLowerHex(byte) else { return nil }
            folded |= byte ^ UInt8(ascii: "0")
            index += 1
        }
        return folded
    }

    @inline(__always)
    private static func isLowerHex(_ byte: UInt8) -> Bool {
        byte &- UInt8(ascii: "0") < 10 || byte &- UInt8(ascii: "a") < 6
    }
}

extension FastRandom {
    /// A new trace's context (`traceparent`), not sampled. The next hops keep the decision
    /// (parent-based), so one trace is sampled everywhere or nowhere. Written into the
    /// string's own storage: every request of a proxy that traces makes one.
    mutating func unsampledParent() -> String {
        let (high, low, span) = (next() | 1, next(), next() | 1)
        let header = String(unsafeUninitializedCapacity: 55) { buffer in
            buffer[0] = UInt8(ascii: "0")
            buffer[1] = UInt8(ascii: "0")
            buffer[2] = UInt8(ascii: "-")
            Self.writeHex(high, into: buffer, at: 3)
            Self.writeHex(low, into: buffer, at: 19)
            buffer[35] = UInt8(ascii: "-")
            Self.writeHex(span, into: buffer, at: 36)
            buffer[52] = UInt8(ascii: "-")
            buffer[53] = UInt8(ascii: "0")
            buffer[54] = UInt8(ascii: "0")
            return 55
        }
        return header
    }

    /// `word` as 16 lowercase hex digits at `offset`.
    private static func writeHex(_ word: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int) {
        var word = word
        var index = offset + 15
        while index >= offset {
            let nibble = UInt8(truncatingIfNeeded: word & 0xF)
            buffer[index] = nibble < 10 ? 48 + nibble : 87 + nibble
            word >>= 4
            index -= 1
        }
    }
}
