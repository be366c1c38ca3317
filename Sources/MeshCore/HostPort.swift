/// A `HOST:PORT` pair as given on the command line (`127.0.0.1:7900`, `[::1]:80`, `localhost:0`).
/// Port 0 asks the OS for a free port; listeners report the port they got.
public struct HostPort: Hashable, Sendable, Codable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`; IPv6 hosts go in brackets.
    /// - Throws: ``MeshError`` `invalid-address` naming the expected form.
    public init(parsing text: String) throws {
        let hint = "expected HOST:PORT, e.g. 127.0.0.1:7900 or [::1]:7900"
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"),
                  text.index(after: close) < text.endIndex,
                  text[text.index(after: close)] == ":" else {
                throw MeshError(.invalidAddress, "address '\(text)' is not valid: \(hint)")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw MeshError(.invalidAddress, "address '\(text)' has no port: \(hint)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        if host.isEmpty { host = "0.0.0.0" }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw MeshError(.invalidAddress, "address '\(text)' has no valid port (0-65535): \(hint)")
        }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// True for addresses only reachable from this host.
    public var isLoopback: Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1"
    }
}
