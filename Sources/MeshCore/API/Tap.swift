import struct Foundation.Date

/// What the control plane asks a service's proxies to sample for `mesh tap`. Sent on the
/// watch stream whenever the set of taps of that service changes, and again before
/// `ttlSeconds` run out while the tap lasts: a proxy that loses the control plane stops
/// sampling by itself.
public struct TapOrder: Codable, Sendable, Equatable {
    /// The tap session (one `mesh tap` command).
    public var id: String
    /// Only requests to this service (the tapped service's outbound calls, or itself).
    public var to: String?
    /// Only requests from this service (`unauthenticated` for plaintext callers).
    public var from: String?
    public var method: String?
    /// Only paths starting with this.
    public var pathPrefix: String?
    /// At most this many requests per second from each proxy; the rest are counted, not sent.
    public var maxPerSecond: Int
    /// Seconds the order holds from its receipt.
    public var ttlSeconds: Double

    public init(id: String, to: String? = nil, from: String? = nil, method: String? = nil, pathPrefix: String? = nil,
                maxPerSecond: Int, ttlSeconds: Double = 30) {
        self.id = id
        self.to = to
        self.from = from
        self.method = method
        self.pathPrefix = pathPrefix
        self.maxPerSecond = maxPerSecond
        self.ttlSeconds = ttlSeconds
    }

    /// Whether a request with these ends, method and path is one this tap asks for.
    public func matches(source: String, destination: String, method: String, path: String) -> Bool {
        (to == nil || to == destination) && (from == nil || from == source)
            && (self.method == nil || self.method == method) && (pathPrefix.map { path.hasPrefix($0) } ?? true)
    }

    /// The widest per-proxy rate the proxies may send, whatever an admin asks.
    public static let maxRate = 100
}

/// One request seen by a tapping proxy, with its hop timings: a line of `mesh tap`.
public struct TapEvent: Codable, Sendable, Equatable {
    /// Always `request` (status lines of the stream have `status`).
    public var type = "request"
    public var at: Date
    /// The proxy instance that saw it (set by the control plane from the report).
    public var instance: String = ""
    /// `inbound` (the tapped service was called) or `outbound` (it called).
    public var direction: String
    public var source: String
    public var sourceIdentity: String
    public var destination: String
    public var method: String
    /// The request path without its query, at most 512 characters.
    public var path: String
    /// 0 when no response came (aborted or reset).
    public var status: Int
    public var tls: Bool
    /// `allow`, `deny`, `audit` (inbound), or nil.
    public var decision: String?
    public var policy: String?
    public var requestID: String?
    public var traceID: String?
    public var durationMs: Double
    /// Outbound with a mesh peer: `caller_proxy`, `network`, `peer_proxy`, `app`; inbound:
    /// `proxy`, `app`. Milliseconds.
    public var hopsMs: [String: Double]?
    public var requestBytes: Int
    public var responseBytes: Int

    public init(at: Date, direction: String, source: String, sourceIdentity: String, destination: String, method: String,
                path: String, status: Int, tls: Bool, durationMs: Double, requestBytes: Int, responseBytes: Int) {
        self.at = at
        self.direction = direction
        self.source = source
        self.sourceIdentity = sourceIdentity
        self.destination = destination
        self.method = method
        self.path = path
        self.status = status
        self.tls = tls
        self.durationMs = durationMs
        self.requestBytes = requestBytes
        self.responseBytes = responseBytes
    }

    /// Whether an event a proxy sent is within the bounds the proxy keeps: the control plane
    /// refuses others whole, so that no report can flood or mislead an operator's terminal.
    public var isPlausible: Bool {
        func isName(_ text: String) -> Bool {
            text == "unknown" || text == "other" || text == "unauthenticated" || (try? ServiceName(text)) != nil
        }
        func isPrintable(_ text: String, max: Int) -> Bool {
            text.utf8.count <= max && !text.unicodeScalars.contains(where: Self.isControl)
        }
        return type == "request" && ["inbound", "outbound"].contains(direction) && isName(source) && isName(destination)
            && isPrintable(sourceIdentity, max: 512) && isPrintable(method, max: 32) && isPrintable(path, max: 512)
            && (0...999).contains(status) && durationMs.isFinite && durationMs >= 0
            && (hopsMs ?? [:]).count <= 4 && (hopsMs ?? [:]).allSatisfy({ isPrintable($0.key, max: 16) && $0.value.isFinite && $0.value >= 0 })
            && [decision, policy, requestID, traceID].allSatisfy({ $0.map { isPrintable($0, max: 256) } ?? true })
            && requestBytes >= 0 && responseBytes >= 0
    }
}

extension TapEvent {
    /// C0 and C1 control characters and DEL: never in a tapped field (they would reach an
    /// operator's terminal).
    public static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// `text` as a tapped field may hold it: control characters replaced by `?`, cut to
    /// `maxBytes` of UTF-8 on a character boundary (the HTTP parser lets tabs and bytes above
    /// 0x7F through in a request target).
    public static func printable(_ text: String, maxBytes: Int) -> String {
        var out = ""
        var bytes = 0
        for scalar in text.unicodeScalars {
            let safe: Unicode.Scalar = isControl(scalar) ? "?" : scalar
            guard bytes + UTF8.width(safe) <= maxBytes else { break }
            out.unicodeScalars.append(safe)
            bytes += UTF8.width(safe)
        }
        return out
    }
}

/// What a proxy sends while tapped: the sampled requests since its last batch, and how many
/// matching requests it left out (over the rate) or lost (its buffer was full).
public struct TapBatch: Codable, Sendable, Equatable {
    public var instanceID: String
    public var events: [TapEvent]
    public var skipped: UInt64
    public var dropped: UInt64
    public init(instanceID: String, events: [TapEvent], skipped: UInt64, dropped: UInt64) {
        self.instanceID = instanceID
        self.events = events
        self.skipped = skipped
        self.dropped = dropped
    }
}

/// A status line of the tap stream (every 2 s, also the stream's keepalive).
public struct TapStatus: Codable, Sendable, Equatable {
    public var type = "status"
    /// Proxies of the service with a live watch stream, which sample for this tap.
    public var proxies: Int
    /// Matching requests left out so far: over the rate limit, or lost on the way.
    public var skipped: UInt64
    public var dropped: UInt64
    public init(proxies: Int, skipped: UInt64, dropped: UInt64) {
        self.proxies = proxies
        self.skipped = skipped
        self.dropped = dropped
    }
}
