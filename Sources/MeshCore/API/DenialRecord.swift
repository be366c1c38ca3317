import struct Foundation.Date

/// One request a proxy refused by policy, as reported to the control plane so that
/// `mesh explain --request-id ID` can explain it later. The caller only ever sees the id.
public struct DenialRecord: Codable, Sendable, Equatable {
    public var requestID: String
    public var at: Date
    public var destination: ServiceName
    public var caller: String
    public var callerAddress: String?
    public var method: String
    public var path: String
    public var code: String
    public var policy: String?
    public var explanation: [String]

    public init(requestID: String, at: Date, destination: ServiceName, caller: String, callerAddress: String?,
                method: String, path: String, code: String, policy: String?, explanation: [String]) {
        self.requestID = requestID
        self.at = at
        self.destination = destination
        self.caller = caller
        self.callerAddress = callerAddress
        self.method = method
        self.path = path
        self.code = code
        self.policy = policy
        self.explanation = explanation
    }
}
