import Foundation
import Logging
import MeshCore
import MeshTransport
import NIOConcurrencyHelpers

/// Whether a tap of this proxy's service is open (set by the ``RegistryWatcher``).
final class TapSwitch: Sendable {
    private let state = NIOLockedValueBox(false)
    var isOn: Bool { state.withLockedValue { $0 } }
    func set(_ on: Bool) { state.withLockedValue { $0 = on } }
}

/// Sends what the loops sampled for `mesh tap` to the control plane four times a second,
/// while a tap is open. Best effort: a lost batch is counted by nobody, but costs no request.
struct TapReporter: Sendable {
    let identity: IdentityManager
    let states: LoopStates
    let instanceID: String
    let tapping: TapSwitch
    let logger: Logger
    static let interval = Duration.milliseconds(250)

    func run() async {
        var wasOn = false
        while !Task.isCancelled {
            try? await Task.sleep(for: Self.interval)
            // One more round after a tap ends sends what was sampled before it did.
            let on = tapping.isOn
            defer { wasOn = on }
            guard on || wasOn else { continue }
            var events: [TapEvent] = []
            var skipped: UInt64 = 0
            var dropped: UInt64 = 0
            for part in await states.gather({ state -> [(events: [TapEvent], skipped: UInt64, dropped: UInt64)] in
                state.tap.map { [$0.take()] } ?? []
            }) {
                events += part.events
                skipped += part.skipped
                dropped += part.dropped
            }
            guard !events.isEmpty || skipped > 0 || dropped > 0 else { continue }
            let batch = TapBatch(instanceID: instanceID, events: events, skipped: skipped, dropped: dropped)
            do {
                _ = try await identity.controlClient().send(.POST, ControlAPI.tapPath, json: batch).decode([String: Bool].self)
            } catch {
                logger.debug("could not send tapped requests", metadata: ["error": "\(error)"])
            }
        }
    }
}
