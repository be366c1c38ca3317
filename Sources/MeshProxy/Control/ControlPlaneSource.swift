import Foundation
import Logging
import MeshCore
import MeshIdentity
import MeshTransport
import NIOCore

/// The control plane as a sidecar's source: join with a token, renew, register, heartbeat,
/// follow the registry.
struct ControlPlaneSource: SidecarSource {
    let settings: Sidecar.ControlPlaneSettings
    let service: ServiceName
    let labels: Labels
    /// The proxy's own `--mtls` mode, reported at registration so that `mesh services` and
    /// `mesh explain` can show it.
    let mtlsMode: String
    /// `http` or `tcp` (`--app-protocol`), reported so that callers know to skip detection.
    let appProtocol: String
    let inboundHost: String
    let identity: IdentityManager
    let logger: Logger
    let trustDomain: String
    private let registration: RegistrationBox
    /// `--state-dir`, and the registry saved there when the proxy starts without a control plane.
    let state: ProxyState?
    private let cached = CachedRegistryBox()
    /// The app's health (`--health-check`), reported at registration and with heartbeats,
    /// and at once when it changes.
    let health: AppHealth?
    /// How current this proxy's view of the control plane is.
    let status: ControlStatus

    init(status: ControlStatus, health: AppHealth?, settings: Sidecar.ControlPlaneSettings, service: ServiceName, labels: Labels, mtlsMode: String, appProtocol: String,
         inboundHost: String,
         group: EventLoopGroup, logger: Logger, install: @escaping @Sendable (SVID, TrustBundle) async -> Void) throws {
        self.settings = settings
        self.service = service
        self.labels = labels
        self.mtlsMode = mtlsMode
        self.health = health
        self.status = status
        self.appProtocol = appProtocol
        self.inboundHost = inboundHost
        self.logger = logger
        self.registration = RegistrationBox()
        let bundle = try TrustBundle(pem: settings.trustBundlePEM)
        self.trustDomain = bundle.trustDomain
        let state = settings.stateDirectory.map { ProxyState(path: $0) }
        self.state = state
        try state?.prepare()
        self.identity = IdentityManager(service: service, control: settings.control, alternates: settings.alternates, bundle: bundle, group: group,
                                        logger: logger, state: state, onChange: install)
    }

    func start(inboundPort: Int) async throws {
        let saved = try await obtainIdentity()
        let instanceID = saved?.instanceID ?? Self.makeInstanceID(service)
        do {
            try state?.save(instanceID: instanceID)
        } catch {
            logger.warning("cannot save the instance id in the state directory", metadata: ["error": "\(error)"])
        }
        let advertise = settings.advertiseAddress.isEmpty && !["0.0.0.0", "::"].contains(inboundHost)
            ? inboundHost : settings.advertiseAddress
        let registration = Registration(
            identity: identity,
            request: ControlAPI.RegisterRequest(instanceID: instanceID, address: advertise,
                                                inboundPort: inboundPort, labels: labels, certificateExpiry: nil,
                                                mtls: mtlsMode, appProtocol: appProtocol),
            interval: settings.heartbeatInterval, health: health, status: status, logger: logger)
        // Registered only once the first registry (with the policies) is installed: see `run`.
        self.registration.value = registration
    }

    /// The first SVID: renewed from the state directory's when it holds a valid one (no token
    /// spent), else joined with the token. Returns what the state directory held; when the
    /// control plane cannot be reached but the saved SVID is valid, the proxy serves with it and
    /// the saved registry (`cached`) until the control plane answers.
    private func obtainIdentity() async throws -> ProxyState.Saved? {
        let through = ([settings.control] + settings.alternates).map(\.description).joined(separator: ", ")
        var savedProblem: String?
        if let state {
            do {
                if let saved = try state.load(service: service, trustDomain: trustDomain) {
                    // The saved roots and those of --ca-file: after a rotation retired the saved
                    // ones, the operator's new ca.pem still reaches the control plane.
                    let given = try TrustBundle(pem: settings.trustBundlePEM)
                    let known = Set(saved.bundle.fingerprints)
                    let roots = saved.bundle.roots + given.roots.filter { !known.contains(TrustBundle.fingerprint(of: $0)) }
                    await identity.adopt(saved.svid, bundle: try TrustBundle(roots: roots, trustDomain: trustDomain))
                    do {
                        try await identity.renew()
                    } catch let error as MeshError where error.code == .unavailable {
                        guard let registry = saved.registry else {
                            throw MeshError(.unavailable, "cannot reach the control plane (\(through)) and \(state.directory.path) holds no registry yet; start the proxy once with the control plane up")
                        }
                        logger.warning("control plane unreachable; serving with the SVID and registry saved in the state directory until it answers",
                                       metadata: ["state_dir": "\(state.directory.path)", "svid_not_after": "\(saved.svid.notAfter)",
                                                  "registry_version": "\(registry.version)", "error": "\(error.message)"])
                        cached.value = registry
                    }
                    return saved
                }
            } catch let error as MeshError where error.code == .invalidCertificate {
                savedProblem = error.message
            }
        }
        guard !settings.joinToken.isEmpty else {
            let why = savedProblem.map { " (\($0))" } ?? (state == nil ? "" : " (\(state?.directory.path ?? "") holds no SVID)")
            throw MeshError(.invalidRequest, "no join token and no still-valid SVID to restart with\(why); create a token with 'mesh token create --service \(service)' and pass --token")
        }
        do {
            try await identity.join(token: settings.joinToken)
        } catch let error as MeshError {
            let saved = savedProblem.map { "; and the state directory cannot help: \($0)" } ?? ""
            throw MeshError(error.code, "cannot join the mesh through \(through): \(error.message)\(saved)")
        }
        return nil
    }

    func run(states: LoopStates, onFirstRegistry: @escaping @Sendable () -> Void) async {
        let identity = self.identity
        let registration = self.registration.value
        let logger = self.logger
        let denials = DenialBuffer()
        let tapping = TapSwitch()
        await states.update { $0.denialSink = denials }
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await DenialReporter(identity: identity, buffer: denials, logger: logger).run() }
            tasks.addTask { await identity.renewalLoop() }
            // The instance is advertised only once its proxy has the registry and the policies:
            // a caller never reaches a proxy that would refuse it for want of configuration.
            let (configured, configuredSignal) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
            let fromCache = cached.value != nil
            tasks.addTask {
                for await _ in configured { break }
                guard let registration, !Task.isCancelled else {
                    onFirstRegistry()
                    return
                }
                // Serving from the state directory: callers still have this instance (the
                // control plane that would have expired it is down); ready at once.
                if fromCache { onFirstRegistry() }
                await registration.registerUntilDone()
                if Task.isCancelled { return }
                if !fromCache { onFirstRegistry() }
                // Also reports a change of the app's health within 100 ms.
                await registration.heartbeatLoop()
            }
            if let registration {
                let reporter = TrafficReporter(identity: identity, states: states, instanceID: registration.request.instanceID,
                                               interval: settings.heartbeatInterval, logger: logger)
                tasks.addTask { await reporter.run() }
                let tap = TapReporter(identity: identity, states: states, instanceID: registration.request.instanceID,
                                      tapping: tapping, logger: logger)
                tasks.addTask { await tap.run() }
            }
            tasks.addTask {
                await RegistryWatcher(identity: identity, states: states, service: service, tapping: tapping, status: status,
                                      initial: cached.value, state: state, logger: logger,
                                      onFirstSnapshot: {
                                          configuredSignal.yield()
                                          configuredSignal.finish()
                                      }).run()
            }
        }
    }

    func stop() async {
        await registration.value?.deregister()
    }

    static func makeInstanceID(_ service: ServiceName) -> String {
        let suffix = (0..<6).map { _ in String("abcdefghijklmnopqrstuvwxyz0123456789".randomElement() ?? "x") }.joined()
        let host = ProcessInfo.processInfo.hostName.prefix(24).filter { $0.isLetter || $0.isNumber || $0 == "-" }
        return "\(service)-\(host)-\(suffix)"
    }
}

/// The registry from the state directory, set in `start` when the control plane is down.
private final class CachedRegistryBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: RegistrySnapshot?
    var value: RegistrySnapshot? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

/// Set once in `start`, read afterwards.
private final class RegistrationBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Registration?
    var value: Registration? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
