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
