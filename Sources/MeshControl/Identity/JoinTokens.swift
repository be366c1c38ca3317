import Crypto
import Foundation
import MeshCore
import MeshStore

/// Issues and redeems single-use join tokens. Only the SHA-256 of a token is stored, so a
/// leaked database does not leak usable tokens.
public struct JoinTokens: Sendable {
    let store: any MeshStore
    let clock: @Sendable () -> Date

    public init(store: any MeshStore, clock: @escaping @Sendable () -> Date = { Date() }) {
        self.store = store
        self.clock = clock
    }

    /// Creates a token bound to `service`, valid for `ttl` seconds.
    public func create(service: ServiceName, ttl: TimeInterval) async throws -> (token: String, expiresAt: Date) {
        guard ttl > 0, ttl <= 30 * 86400 else {
            throw MeshError(.invalidRequest, "token lifetime must be between 1s and 30d")
        }
        let secret = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        let token = "mjt_" + secret.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
        let expiresAt = clock().addingTimeInterval(ttl)
        try await store.insertJoinToken(StoredJoinToken(hash: Self.hash(token), service: service, expiresAt: expiresAt))
        return (token, expiresAt)
    }

    /// Redeems a token: returns the service it is bound to, exactly once.
    public func redeem(_ token: String) async throws -> ServiceName {
        guard token.hasPrefix("mjt_"), token.utf8.count < 200 else {
            throw MeshError(.tokenUnknown, "the join token is malformed; copy it whole from 'mesh token create'")
        }
        return try await store.consumeJoinToken(hash: Self.hash(token), now: clock()).service
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
