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
    /// context is ignored, as the W3C specification asks).
    static func sampled(_ value: String) -> Bool? {
        let bytes = Array(value.utf8)
        guard bytes.count >= 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
              !(bytes[0] == UInt8(ascii: "f") && bytes[1] == UInt8(ascii: "f")),
              bytes[0..<2].allSatisfy(isLowerHex), bytes[3..<35].allSatisfy(isLowerHex), bytes[36..<52].allSatisfy(isLowerHex),
              bytes[53..<55].allSatisfy(isLowerHex),
              bytes[3..<35].contains(where: { $0 != UInt8(ascii: "0") }), bytes[36..<52].contains(where: { $0 != UInt8(ascii: "0") }),
              let flags = UInt8(String(decoding: bytes[53..<55], as: UTF8.self), radix: 16) else { return nil }
        // Version 00 is exactly 55 bytes; later versions may append fields.
        if bytes[0] == UInt8(ascii: "0") && bytes[1] == UInt8(ascii: "0") && bytes.count != 55 { return nil }
        return flags & 1 == 1
    }

    private static func isLowerHex(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (97...102).contains(byte)
    }
}

extension FastRandom {
    /// A new trace's context, not sampled: `(traceparent, trace id)`. The next hops keep the
    /// decision (parent-based), so one trace is sampled everywhere or nowhere.
    mutating func unsampledParent() -> (header: String, traceID: String) {
        var bytes = [UInt8]()
        bytes.reserveCapacity(55)
        func hex(_ word: UInt64) {
            for shift in stride(from: 60, through: 0, by: -4) {
                let nibble = UInt8((word >> UInt64(shift)) & 0xF)
                bytes.append(nibble < 10 ? 48 + nibble : 87 + nibble)
            }
        }
        bytes.append(contentsOf: "00-".utf8)
        hex(next() | 1)
        hex(next())
        bytes.append(UInt8(ascii: "-"))
        hex(next() | 1)
        bytes.append(contentsOf: "-00".utf8)
        let header = String(decoding: bytes, as: UTF8.self)
        return (header, String(decoding: bytes[3..<35], as: UTF8.self))
    }
}
