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
        self.identity = IdentityManager(service: service, control: settings.control, alternates: settings.alternates, bundle: bundle, group: group,
                                        logger: logger, onChange: install)
    }

    func start(inboundPort: Int) async throws {
        do {
            try await identity.join(token: settings.joinToken)
        } catch let error as MeshError {
            let through = ([settings.control] + settings.alternates).map(\.description).joined(separator: ", ")
            throw MeshError(error.code, "cannot join the mesh through \(through): \(error.message)")
        }
        let advertise = settings.advertiseAddress.isEmpty && !["0.0.0.0", "::"].contains(inboundHost)
            ? inboundHost : settings.advertiseAddress
        let registration = Registration(
            identity: identity,
            request: ControlAPI.RegisterRequest(instanceID: Self.makeInstanceID(service), address: advertise,
                                                inboundPort: inboundPort, labels: labels, certificateExpiry: nil,
                                                mtls: mtlsMode, appProtocol: appProtocol),
            interval: settings.heartbeatInterval, health: health, status: status, logger: logger)
        // Registered only once the first registry (with the policies) is installed: see `run`.
        self.registration.value = registration
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
            tasks.addTask {
                for await _ in configured { break }
                guard let registration, !Task.isCancelled else {
                    onFirstRegistry()
                    return
                }
                await registration.registerUntilDone()
                if Task.isCancelled { return }
                onFirstRegistry()
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
                await RegistryWatcher(identity: identity, states: states, service: service, tapping: tapping, status: status, logger: logger,
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

/// Set once in `start`, read afterwards.
private final class RegistrationBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Registration?
    var value: Registration? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
