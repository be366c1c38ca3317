import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport

/// What a proxy keeps on disk with `--state-dir DIR`, so that it can restart while the control
/// plane is down: its SVID chain followed by the SVID's private key (`svid.pem`: one file, so
/// a crash between two writes can never pair a chain with another key), the trust bundle
/// (`bundle.pem`), the last registry and policies (`registry.json`) and its instance id
/// (`instance-id`). The directory is 0700 and every file 0600, written whole (temporary file,
/// then rename). A restarted proxy renews with the saved SVID (no new join token); if the
/// control plane cannot be reached it serves with the saved SVID and registry, but only while
/// that SVID is still valid, and otherwise refuses to start, saying why.
struct ProxyState: Sendable {
    let directory: URL

    init(path: String) { directory = URL(fileURLWithPath: path, isDirectory: true) }

    private var svidFile: URL { directory.appendingPathComponent("svid.pem") }
    private var bundleFile: URL { directory.appendingPathComponent("bundle.pem") }
    private var registryFile: URL { directory.appendingPathComponent("registry.json") }
    private var instanceFile: URL { directory.appendingPathComponent("instance-id") }

    /// What was found on disk.
    struct Saved: Sendable {
        var svid: SVID
        var bundle: TrustBundle
        var registry: RegistrySnapshot?
        var instanceID: String?
    }

    /// Creates the directory (0700); refuses one that others can read (it holds a private key).
    func prepare() throws {
        let fm = FileManager.default
        if !fm.fileExists(atPath: directory.path) {
            do {
                try fm.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw MeshError(.fileUnreadable, "cannot create the state directory \(directory.path): \(error.localizedDescription)")
            }
        }
        var info = stat()
        guard stat(directory.path, &info) == 0 else {
            throw MeshError(.fileUnreadable, "cannot read the state directory \(directory.path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw MeshError(.fileUnreadable, "the state directory \(directory.path) is open to others (mode \(String(info.st_mode & 0o777, radix: 8))); it holds the proxy's private key: run chmod 700 \(directory.path)")
        }
    }

    /// The saved SVID if it is still valid at `now`, for `service` in the bundle's trust domain;
    /// nil when there is none; an error that says why a saved one cannot be used.
    func load(service: ServiceName, trustDomain: String, now: Date = Date()) throws -> Saved? {
        let fm = FileManager.default
        guard fm.fileExists(atPath: svidFile.path) else { return nil }
        let svid: SVID
        let bundle: TrustBundle
        do {
            let text = try read(svidFile)
            svid = try SVID(chain: try PEM.certificates(from: text), key: try WorkloadKey(pem: try Self.keyBlock(in: text)))
            bundle = try TrustBundle(pem: try read(bundleFile))
        } catch {
            throw MeshError(.invalidCertificate, "the SVID saved in \(directory.path) cannot be read (\(error)); remove the directory and start with a new join token")
        }
        let expected = try SPIFFEID(trustDomain: trustDomain, service: service)
        guard svid.id == expected, bundle.trustDomain == trustDomain else {
            throw MeshError(.invalidCertificate, "the SVID saved in \(directory.path) is \(svid.id), not \(expected); use a state directory per service")
        }
        guard svid.notAfter > now else {
            throw MeshError(.invalidCertificate, "the SVID saved in \(directory.path) expired at \(svid.notAfter)")
        }
        var registry: RegistrySnapshot?
        if let data = fm.contents(atPath: registryFile.path) {
            registry = try? JSONCoding.decoder.decode(RegistrySnapshot.self, from: data)
        }
        let instanceID = (try? read(instanceFile))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return Saved(svid: svid, bundle: bundle, registry: registry, instanceID: instanceID?.isEmpty == false ? instanceID : nil)
    }

    func save(svid: SVID, bundle: TrustBundle) throws {
        try write(try PEM.text(of: svid.chain) + (try svid.key.pem), to: svidFile)
        try write(try bundle.pem, to: bundleFile)
    }

    /// The private key block of a PEM text that also holds certificates.
    private static func keyBlock(in text: String) throws -> String {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let start = lines.firstIndex(where: { $0.hasPrefix("-----BEGIN") && $0.hasSuffix("PRIVATE KEY-----") }),
              let end = lines[start...].firstIndex(where: { $0.hasPrefix("-----END") && $0.hasSuffix("PRIVATE KEY-----") }) else {
            throw MeshError(.invalidCertificate, "no private key in the saved SVID file")
        }
        return lines[start...end].joined(separator: "\n") + "\n"
    }

    func save(registry: RegistrySnapshot) throws {
        try write(String(decoding: try JSONCoding.encoder.encode(registry), as: UTF8.self), to: registryFile)
    }

    func save(instanceID: String) throws {
        try write(instanceID + "\n", to: instanceFile)
    }

    private func read(_ file: URL) throws -> String {
        do { return try String(contentsOf: file, encoding: .utf8) } catch {
            throw MeshError(.fileUnreadable, "cannot read \(file.path): \(error.localizedDescription)")
        }
    }

    /// Temporary file created 0600, then renamed over the old one: a crash never leaves half a key.
    private func write(_ text: String, to file: URL) throws {
        let temporary = file.appendingPathExtension("tmp")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else {
            throw MeshError(.fileUnreadable, "cannot write \(temporary.path): \(String(cString: strerror(errno)))")
        }
        fchmod(fd, 0o600)
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        guard written == bytes.count, rename(temporary.path, file.path) == 0 else {
            throw MeshError(.fileUnreadable, "cannot write \(file.path): \(String(cString: strerror(errno)))")
        }
    }
}
