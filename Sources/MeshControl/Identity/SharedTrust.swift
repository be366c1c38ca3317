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
    private struct StoredCA: Codable {
        var certificatePEM: String
        var sealedKey: String
    }

    static func load(store: any MeshStore, secret: StoreSecret, directory: DataDirectory, trustDomain: String,
                     logger: Logger) async throws -> (ca: CertificateAuthority, adminToken: String) {
        // Offer the data directory's CA, or a new one; whichever replica stored first wins.
        let local = try directory.existingCA()
        let offered = try local ?? CertificateAuthority.create(trustDomain: trustDomain)
        let offer = StoredCA(certificatePEM: try offered.certificatePEM,
                             sealedKey: try secret.seal(try offered.privateKeyPEM, purpose: "CA private key"))
        let text = try await store.sharedValue("ca", orInsert: String(decoding: try JSONEncoder().encode(offer), as: UTF8.self))
        guard let stored = try? JSONDecoder().decode(StoredCA.self, from: Data(text.utf8)) else {
            throw MeshError(.storeFailure, "the CA kept in the store does not decode; the store may be damaged or written by a newer mesh")
        }
        let ca = try CertificateAuthority(certificatePEM: stored.certificatePEM,
                                          privateKeyPEM: try secret.open(stored.sealedKey, purpose: "CA private key"))
        guard ca.trustDomain == trustDomain else {
            throw MeshError(.invalidRequest, "the store holds a CA for trust domain '\(ca.trustDomain)', not '\(trustDomain)'; pass --trust-domain \(ca.trustDomain)")
        }
        if let local, try local.certificatePEM != ca.certificatePEM {
            logger.warning("the data directory's CA differs from the one in the store; using the store's (every replica must sign with the same CA)",
                           metadata: ["data_dir": "\(directory.path.path)"])
        }
        try directory.writeBundle(try ca.certificatePEM)

        let offeredToken = try directory.existingAdminToken() ?? DataDirectory.makeAdminToken()
        let sealedToken = try await store.sharedValue("admin-token", orInsert: try secret.seal(offeredToken, purpose: "admin token"))
        let adminToken = try secret.open(sealedToken, purpose: "admin token")
        try directory.writeAdminToken(adminToken)
        return (ca, adminToken)
    }
}
