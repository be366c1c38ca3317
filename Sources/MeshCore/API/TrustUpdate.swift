/// The trust roots proxies must hold, as the control plane distributes them on the registry
/// stream (with every snapshot, and as a `trust` event when they change): the CA rotation
/// (`mesh ca rotate`) adds a root, switches signing to it and retires the old one, and each
/// step reaches every proxy this way.
public struct TrustUpdate: Codable, Sendable, Equatable {
    /// PEM of every root to trust now (the mesh CA(s) only).
    public var bundlePEM: String
    /// Fingerprint (``ServiceInstance/certificateRoot``'s form) of the root that signs new
    /// SVIDs. A proxy whose SVID chains to another root renews, at a random moment within
    /// `renewWithin` seconds, so that a fleet does not renew in the same second.
    public var signingRoot: String
    public var renewWithin: Double

    public init(bundlePEM: String, signingRoot: String, renewWithin: Double) {
        self.bundlePEM = bundlePEM
        self.signingRoot = signingRoot
        self.renewWithin = renewWithin
    }
}
