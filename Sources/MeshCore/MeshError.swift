/// An error a user can act on: a stable machine-readable code plus a message that says what is
/// wrong and what to do. Every layer throws these for conditions caused by input (network,
/// configuration, files); programming errors stay preconditions.
public struct MeshError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Stable identifiers, safe to match on in scripts and tests.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidServiceName = Code(rawValue: "invalid-service-name")
        public static let invalidAddress = Code(rawValue: "invalid-address")
        public static let invalidDuration = Code(rawValue: "invalid-duration")
        public static let invalidLabel = Code(rawValue: "invalid-label")
        public static let invalidSPIFFEID = Code(rawValue: "invalid-spiffe-id")
        public static let invalidCSR = Code(rawValue: "invalid-csr")
        public static let invalidCertificate = Code(rawValue: "invalid-certificate")
        public static let invalidRequest = Code(rawValue: "invalid-request")
        public static let tokenUnknown = Code(rawValue: "token-unknown")
        public static let tokenExpired = Code(rawValue: "token-expired")
        public static let tokenUsed = Code(rawValue: "token-used")
        public static let unauthenticated = Code(rawValue: "unauthenticated")
        public static let forbidden = Code(rawValue: "forbidden")
        public static let notFound = Code(rawValue: "not-found")
        public static let fileUnreadable = Code(rawValue: "file-unreadable")
        public static let storeFailure = Code(rawValue: "store-failure")
        public static let unavailable = Code(rawValue: "unavailable")
        public static let protocolError = Code(rawValue: "protocol-error")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) [\(code)]" }
}
