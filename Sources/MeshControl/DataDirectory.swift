import Foundation
import MeshCore
import MeshIdentity

/// The control plane's data directory: the CA (key mode 0600), the trust bundle `ca.pem`
/// that operators copy to their hosts, the admin token (0600) and the embedded store.
public struct DataDirectory: Sendable {
    public let path: URL

    public init(_ path: String) { self.path = URL(fileURLWithPath: path, isDirectory: true) }

    public var caKeyFile: URL { path.appendingPathComponent("ca.key") }
    public var caCertificateFile: URL { path.appendingPathComponent("ca-cert.pem") }
    public var trustBundleFile: URL { path.appendingPathComponent("ca.pem") }
    public var adminTokenFile: URL { path.appendingPathComponent("admin.token") }
    public var sqliteFile: URL { path.appendingPathComponent("mesh.sqlite") }
    /// The roots and the rotation's phase (one control plane; replicas keep it in the store).
    public var trustFile: URL { path.appendingPathComponent("trust.json") }

    /// Creates the directory (0700) if needed.
    public func prepare() throws {
        do {
            try FileManager.default.createDirectory(at: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeshError(.fileUnreadable, "cannot create data directory \(path.path): \(error.localizedDescription)")
        }
    }

    /// Loads the admin token, or creates one on first start.
    public func loadOrCreateAdminToken() throws -> String {
        if let token = try existingAdminToken() { return token }
        let token = Self.makeAdminToken()
        try writeAdminToken(token)
        return token
    }

    func existingAdminToken() throws -> String? {
        guard FileManager.default.fileExists(atPath: adminTokenFile.path) else { return nil }
        let token = try read(adminTokenFile).trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 32 else {
            throw MeshError(.fileUnreadable, "\(adminTokenFile.path) holds no valid admin token; delete it to have a new one made")
        }
        return token
    }

    static func makeAdminToken() -> String {
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255) }
        return "mat_" + bytes.map { String(format: "%02x", $0) }.joined()
    }

    func writeAdminToken(_ token: String) throws {
        try write(token + "\n", to: adminTokenFile, mode: 0o600)
    }

    /// The CA of an earlier single control plane, if this directory has one.
    func existingCA() throws -> CertificateAuthority? {
        guard FileManager.default.fileExists(atPath: caKeyFile.path) else { return nil }
        return try CertificateAuthority(certificatePEM: try read(caCertificateFile), privateKeyPEM: try read(caKeyFile))
    }

    func trustState() throws -> TrustState? {
        guard FileManager.default.fileExists(atPath: trustFile.path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        guard let state = try? decoder.decode(TrustState.self, from: Data(try read(trustFile).utf8)) else {
            throw MeshError(.fileUnreadable, "\(trustFile.path) does not decode; restore it from backup")
        }
        return state
    }

    /// Saves the state, and the signing root as `ca.key` / `ca-cert.pem` and every root as
    /// `ca.pem`, where operators and tools have always found them.
    func save(trustState state: TrustState) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        encoder.outputFormatting = [.sortedKeys]
        try write(String(decoding: try encoder.encode(state), as: UTF8.self), to: trustFile, mode: 0o600)
        let signing = state.roots[min(state.signing, state.roots.count - 1)]
        try write(signing.key, to: caKeyFile, mode: 0o600)
        try write(signing.certificatePEM, to: caCertificateFile, mode: 0o644)
        try writeBundle(state.roots.map(\.certificatePEM).joined())
    }

    /// Writes the trust bundle operators copy to their hosts.
    func writeBundle(_ pem: String) throws {
        try write(pem, to: trustBundleFile, mode: 0o644)
    }

    private func read(_ file: URL) throws -> String {
        do { return try String(contentsOf: file, encoding: .utf8) } catch {
            throw MeshError(.fileUnreadable, "cannot read \(file.path): \(error.localizedDescription)")
        }
    }

    /// Written whole: a temporary file created with the final mode (a secret is never briefly
    /// world-readable), synced, then renamed over the old one, so a crash or a full disk never
    /// leaves a half-written key or trust state.
    private func write(_ text: String, to file: URL, mode: Int) throws {
        let temporary = file.appendingPathExtension("tmp")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC, mode_t(mode))
        guard fd >= 0 else {
            throw MeshError(.fileUnreadable, "cannot write \(file.path): \(String(cString: strerror(errno)))")
        }
        fchmod(fd, mode_t(mode))
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temporary.path, file.path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary.path)
            throw MeshError(.fileUnreadable, "cannot write \(file.path): \(reason)")
        }
    }
}
