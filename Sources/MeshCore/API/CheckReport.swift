import struct Foundation.Date

extension AdminAPI {
    /// `GET`: ``CheckReport`` (`mesh check`).
    public static let checkPath = "/v1/check"
}

/// What `mesh check` reports: every condition an operator should act on, each with what to do.
public struct CheckReport: Codable, Sendable, Equatable {
    public enum Severity: String, Codable, Sendable, Comparable {
        case ok, warning, critical

        private var rank: Int { self == .ok ? 0 : self == .warning ? 1 : 2 }
        public static func < (a: Severity, b: Severity) -> Bool { a.rank < b.rank }
    }

    public struct Finding: Codable, Sendable, Equatable {
        public var severity: Severity
        /// What was checked: `roots`, `rotation`, `svids`, `proxies`, `replicas`, `clock`, `store`, `policy`.
        public var check: String
        public var message: String

        public init(severity: Severity, check: String, message: String) {
            self.severity = severity
            self.check = check
            self.message = message
        }
    }

    public var findings: [Finding]
    public var checkedAt: Date

    public init(findings: [Finding], checkedAt: Date) {
        self.findings = findings
        self.checkedAt = checkedAt
    }

    public var worst: Severity { findings.map(\.severity).max() ?? .ok }
}
