#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One access log line: what happened to one request at one proxy.
///
/// Encoded by hand into JSON (the fields are few and fixed) so that a line costs a couple of
/// microseconds on the event loop rather than a Foundation encoder's tens.
public struct AccessLogEntry: Sendable {
    public var direction: String
    public var traceID: String?
    /// The id of a denial (`x-mesh-request-id`), for `mesh explain --request-id`.
    public var requestID: String?
    public var sourceService: String
    public var sourceIdentity: String
    public var sourceAddress: String?
    public var destinationService: String
    public var destinationIdentity: String
    public var method: String
    /// The normalized path (inbound) or the path as the app sent it (outbound); no query.
    public var path: String
    public var status: Int
    public var tls: Bool
    public var durationNanos: UInt64
    /// Named parts of the duration: `caller_proxy`, `network`, `peer_proxy`, `app`
    /// (outbound) or `proxy`, `app` (inbound).
    public var hops: [(name: String, nanos: UInt64)]
    public var requestBytes: Int
    public var responseBytes: Int
    /// The authorization decision code and policy (inbound).
    public var decision: String?
    public var policy: String?

    public init(direction: String, sourceService: String, sourceIdentity: String, destinationService: String,
                destinationIdentity: String, method: String, path: String, status: Int, tls: Bool, durationNanos: UInt64) {
        self.direction = direction
        self.sourceService = sourceService
        self.sourceIdentity = sourceIdentity
        self.destinationService = destinationService
        self.destinationIdentity = destinationIdentity
        self.method = method
        self.path = path
        self.status = status
        self.tls = tls
        self.durationNanos = durationNanos
        self.hops = []
        self.requestBytes = 0
        self.responseBytes = 0
    }

    /// The JSON object, one line, time first.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        out.append(contentsOf: #"{"time":""#.utf8)
        out.append(contentsOf: Self.now().utf8)
        out.append(UInt8(ascii: "\""))
        func field(_ name: String, _ value: String?) {
            out.append(contentsOf: ",\"\(name)\":".utf8)
            guard let value else { out.append(contentsOf: "null".utf8); return }
            Self.appendString(value, to: &out)
        }
        func number(_ name: String, _ value: String) {
            out.append(contentsOf: ",\"\(name)\":\(value)".utf8)
        }
        field("direction", direction)
        field("trace_id", traceID)
        field("request_id", requestID)
        field("source_service", sourceService)
        field("source_identity", sourceIdentity)
        field("source_address", sourceAddress)
        field("destination_service", destinationService)
        field("destination_identity", destinationIdentity)
        field("method", method)
        field("path", path)
        number("status", String(status))
        number("tls", tls ? "true" : "false")
        number("duration_ms", Self.milliseconds(durationNanos))
        out.append(contentsOf: #","hops_ms":{"#.utf8)
        for (index, hop) in hops.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: "\"\(hop.name)\":\(Self.milliseconds(hop.nanos))".utf8)
        }
        out.append(UInt8(ascii: "}"))
        number("request_bytes", String(requestBytes))
        number("response_bytes", String(responseBytes))
        field("decision", decision)
        field("policy", policy)
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Milliseconds with microsecond precision: `1.234`.
    static func milliseconds(_ nanos: UInt64) -> String {
        let micros = nanos / 1000
        let fraction = String(micros % 1000)
        return "\(micros / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    /// RFC 3339 UTC with milliseconds, from the wall clock.
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        var seconds = time_t(spec.tv_sec)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T" +
            "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(spec.tv_nsec / 1_000_000), 3))Z"
    }

    /// A JSON string literal; control characters, quotes and backslashes escaped, so that a
    /// hostile path cannot break the line or forge fields.
    static func appendString(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case UInt8(ascii: "\n"): out.append(contentsOf: #"\n"#.utf8)
            case UInt8(ascii: "\r"): out.append(contentsOf: #"\r"#.utf8)
            case UInt8(ascii: "\t"): out.append(contentsOf: #"\t"#.utf8)
            case 0..<0x20, 0x7f:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: #"\u00"#.utf8)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xf)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
