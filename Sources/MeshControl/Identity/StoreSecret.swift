import Crypto
import Foundation
import MeshCore

/// The operator's key for secrets kept in a shared store (`--store-secret-file` or
/// `MESH_STORE_SECRET`): the CA private key and the admin token are sealed with it (AES-256-GCM,
/// a key per purpose derived with HKDF-SHA256), so the database never holds them in plaintext
/// and a database dump alone cannot mint identities. Every replica needs the same secret.
public struct StoreSecret: Sendable {
    private let material: SymmetricKey

    /// At least 32 bytes: the secret is used as key material, not stretched like a password.
    public static let minimumBytes = 32

    public init(bytes: [UInt8]) throws {
        guard bytes.count >= Self.minimumBytes else {
            throw MeshError(.invalidRequest, "the store secret has \(bytes.count) bytes, fewer than \(Self.minimumBytes); make one with: head -c 32 /dev/urandom | base64 > store.secret && chmod 600 store.secret")
        }
        material = SymmetricKey(data: bytes)
    }

    /// The file's text, base64-decoded when it is base64 of enough bytes, else its raw bytes.
    /// A file others can read is refused: it opens the CA key.
    public static func load(path: String) throws -> StoreSecret {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw MeshError(.fileUnreadable, "cannot read the store secret \(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw MeshError(.fileUnreadable, "the store secret \(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); run: chmod 600 \(path)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MeshError(.fileUnreadable, "cannot read the store secret \(path)")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws -> StoreSecret {
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if let decoded = Data(base64Encoded: text), decoded.count >= minimumBytes {
            return try StoreSecret(bytes: Array(decoded))
        }
        return try StoreSecret(bytes: Array(text.utf8))
    }

    /// `v1:` + base64 of AES-GCM's nonce, ciphertext and tag. `purpose` binds the sealed value
    /// to its use: a sealed admin token does not open as a CA key.
    func seal(_ plaintext: String, purpose: String) throws -> String {
        let box = try AES.GCM.seal(Data(plaintext.utf8), using: key(for: purpose), authenticating: Data(purpose.utf8))
        guard let combined = box.combined else {
            throw MeshError(.storeFailure, "cannot seal the \(purpose)")
        }
        return "v1:" + combined.base64EncodedString()
    }

    func open(_ sealed: String, purpose: String) throws -> String {
        guard sealed.hasPrefix("v1:"), let combined = Data(base64Encoded: String(sealed.dropFirst(3))),
              let box = try? AES.GCM.SealedBox(combined: combined) else {
            throw MeshError(.storeFailure, "the \(purpose) in the store is not sealed in a format this mesh knows")
        }
        guard let plain = try? AES.GCM.open(box, using: key(for: purpose), authenticating: Data(purpose.utf8)) else {
            throw MeshError(.forbidden, "the store secret does not open the \(purpose) kept in the store; every replica needs the secret the first one started with")
        }
        return String(decoding: plain, as: UTF8.self)
    }

    private func key(for purpose: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: material, salt: Data("swiftmesh-store-secret".utf8),
                               info: Data(purpose.utf8), outputByteCount: 32)
    }
}
