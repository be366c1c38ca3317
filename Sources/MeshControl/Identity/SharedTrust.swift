import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshStore

/// The CA and the admin token of control plane replicas that share a store: kept in the store,
/// sealed with the operator's ``StoreSecret``, so that every replica signs with the same CA and
/// accepts the same admin token. The first replica to start stores them (its data directory's
/// CA if it has one, so a single control plane moves to PostgreSQL without re-issuing trust);
/// the others load them. Each replica writes the bundle (`ca.pem`) and the admin token into its
/// own data directory, for the operators and tools on its host; the CA key stays in the store.
enum SharedTrust {
    static func load(store: any MeshStore, secret: StoreSecret, directory: DataDirectory, trustDomain: String,
                     logger: Logger) async throws -> (storage: StoreTrustStorage, adminToken: String) {
        // Offer the CA an earlier release kept in the store (`ca`, before rotations), else the
        // data directory's, else a new one; whichever replica stored first wins.
        let local = try directory.existingCA()
        let legacy = try await legacyCA(store: store, secret: secret)
        let offered = try legacy ?? local ?? CertificateAuthority.create(trustDomain: trustDomain)
        let storage = StoreTrustStorage(store: store, secret: secret, initial: try TrustState.single(offered))
        let state = try await storage.load()
        if let local, try !state.roots.contains(where: { $0.certificatePEM == (try local.certificatePEM) }) {
            logger.warning("the data directory's CA differs from the one in the store; using the store's (every replica must sign with the same CA)",
                           metadata: ["data_dir": "\(directory.path.path)"])
        }

        let offeredToken = try directory.existingAdminToken() ?? DataDirectory.makeAdminToken()
        let sealedToken = try await store.sharedValue("admin-token", orInsert: try secret.seal(offeredToken, purpose: "admin token"))
        let adminToken = try secret.open(sealedToken, purpose: "admin token")
        try directory.writeAdminToken(adminToken)
        return (storage, adminToken)
    }

    /// The CA as the first replicated release stored it (`ca`: certificate and sealed key).
    /// Reading a shared value stores the offer when there is none: an empty one means none.
    private static func legacyCA(store: any MeshStore, secret: StoreSecret) async throws -> CertificateAuthority? {
        struct StoredCA: Codable {
            var certificatePEM: String
            var sealedKey: String
        }
        let text = try await store.sharedValue("ca", orInsert: "")
        guard !text.isEmpty else { return nil }
        guard let stored = try? JSONDecoder().decode(StoredCA.self, from: Data(text.utf8)) else {
            throw MeshError(.storeFailure, "the CA kept in the store does not decode; the store may be damaged or written by a newer mesh")
        }
        return try CertificateAuthority(certificatePEM: stored.certificatePEM,
                                        privateKeyPEM: try secret.open(stored.sealedKey, purpose: "CA private key"))
    }
}
