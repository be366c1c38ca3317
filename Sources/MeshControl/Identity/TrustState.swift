import Foundation
import MeshCore
import MeshIdentity
import MeshStore
import MeshTransport

/// The mesh's roots and where a CA rotation stands: the roots proxies must trust (oldest
/// first), which one signs, and the rotation's phase. Keys are PEM here; storages seal them.
struct TrustState: Codable, Equatable, Sendable {
    struct Root: Codable, Equatable, Sendable {
        var certificatePEM: String
        var key: String
    }

    /// `mesh ca rotate`'s steps. Each waits until every registered proxy has reported the
    /// previous one done (see ``TrustAuthority/advance(instances:now:)``).
    enum Phase: String, Codable, Sendable {
        /// One root, which signs.
        case stable
        /// A new root is in every bundle; the old one still signs.
        case adding
        /// The new root signs; proxies renew their SVIDs with it.
        case signing
        /// The old root leaves the bundles.
        case retiring
    }

    var roots: [Root]
    var signing: Int
    var phase: Phase
    var since: Date

    static func single(_ ca: CertificateAuthority, now: Date = Date()) throws -> TrustState {
        TrustState(roots: [Root(certificatePEM: try ca.certificatePEM, key: try ca.privateKeyPEM)], signing: 0, phase: .stable, since: now)
    }
}

/// Where the trust state lives: the data directory (one control plane) or the shared store
/// (replicas; keys sealed with the store secret). `replace` is compare-and-swap, so two
/// replicas can never both move a rotation on.
protocol TrustStorage: Sendable {
    func load() async throws -> TrustState
    func replace(_ old: TrustState, with new: TrustState) async throws -> Bool
}

/// One control plane: `trust.json` (0600) in the data directory, and the signing root also as
/// `ca.key` / `ca-cert.pem` and the bundle as `ca.pem`, as before rotations existed.
struct DirectoryTrustStorage: TrustStorage {
    let directory: DataDirectory
    let trustDomain: String

    func load() async throws -> TrustState {
        if let saved = try directory.trustState() { return saved }
        // First start, or a data directory from before rotations (its `ca.key`). The trust
        // domain is checked where the state is used (`TrustAuthority`).
        let state = try TrustState.single(try directory.existingCA() ?? CertificateAuthority.create(trustDomain: trustDomain))
        try directory.save(trustState: state)
        return state
    }

    func replace(_ old: TrustState, with new: TrustState) async throws -> Bool {
        guard try await load() == old else { return false }
        try directory.save(trustState: new)
        return true
    }
}

/// Replicas: the `trust` shared value of the store, keys sealed with the operator's secret.
struct StoreTrustStorage: TrustStorage {
    let store: any MeshStore
    let secret: StoreSecret
    /// What a first replica offers when the store has no trust state yet.
    let initial: TrustState

    func load() async throws -> TrustState {
        try open(try await store.sharedValue("trust", orInsert: try sealed(initial)))
    }

    func replace(_ old: TrustState, with new: TrustState) async throws -> Bool {
        // The stored text is compared, so read it as stored (sealing is not deterministic).
        let current = try await store.sharedValue("trust", orInsert: try sealed(initial))
        guard try open(current) == old else { return false }
        return try await store.replaceSharedValue("trust", old: current, new: try sealed(new))
    }

    private func sealed(_ state: TrustState) throws -> String {
        var copy = state
        for index in copy.roots.indices {
            copy.roots[index].key = try secret.seal(copy.roots[index].key, purpose: "CA private key")
        }
        return String(decoding: try JSONCoding.encoder.encode(copy), as: UTF8.self)
    }

    private func open(_ text: String) throws -> TrustState {
        guard var state = try? JSONCoding.decoder.decode(TrustState.self, from: Data(text.utf8)) else {
            throw MeshError(.storeFailure, "the trust state kept in the store does not decode; the store may be damaged or written by a newer mesh")
        }
        for index in state.roots.indices {
            state.roots[index].key = try secret.open(state.roots[index].key, purpose: "CA private key")
        }
        return state
    }
}
