import struct Foundation.Date

extension AdminAPI {
    /// `GET`: ``CAStatus``; `POST …/rotate`: start a root rotation (`mesh ca rotate`).
    public static let caPath = "/v1/ca"
    public static let caRotatePath = "/v1/ca/rotate"
}

/// The mesh CA as `mesh ca status` shows it: the roots, which one signs, where a rotation
/// stands and which proxies it waits for.
public struct CAStatus: Codable, Sendable, Equatable {
    public struct Root: Codable, Sendable, Equatable {
        /// SHA-256 of the certificate, first 16 bytes in hex (what proxies report).
        public var fingerprint: String
        public var notBefore: Date
        public var notAfter: Date
        public var signing: Bool

        public init(fingerprint: String, notBefore: Date, notAfter: Date, signing: Bool) {
            self.fingerprint = fingerprint
            self.notBefore = notBefore
            self.notAfter = notAfter
            self.signing = signing
        }
    }

    public struct Pending: Codable, Sendable, Equatable {
        public var instance: String
        public var service: String
        public var waiting: String

        public init(instance: String, service: String, waiting: String) {
            self.instance = instance
            self.service = service
            self.waiting = waiting
        }
    }

    /// `stable`, `adding`, `signing` or `retiring`.
    public var phase: String
    public var since: Date
    public var roots: [Root]
    /// The registered instances the current phase waits for.
    public var pending: [Pending]
    public var instances: Int

    public init(phase: String, since: Date, roots: [Root], pending: [Pending], instances: Int) {
        self.phase = phase
        self.since = since
        self.roots = roots
        self.pending = pending
        self.instances = instances
    }
}
