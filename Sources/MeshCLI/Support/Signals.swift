import Dispatch
import Foundation
import NIOConcurrencyHelpers

/// Runs `work` until it finishes or SIGINT/SIGTERM arrives; on a signal the work is
/// cancelled and allowed to shut down cleanly.
enum SignalScope {
    static func run(_ work: @escaping @Sendable () async throws -> Void) async throws {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let task = Task { try await work() }
        let signalled = ManagedFlag()
        let sources = [SIGINT, SIGTERM].map { number -> DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                signalled.set()
                task.cancel()
            }
            source.resume()
            return source
        }
        defer { sources.forEach { $0.cancel() } }
        do {
            try await task.value
        } catch is CancellationError where signalled.isSet {
            // Stopped on request: a clean exit.
        }
    }
}

/// A flag set from a signal handler and read afterwards.
final class ManagedFlag: Sendable {
    private let box = NIOLockedValueBox(false)
    func set() { box.withLockedValue { $0 = true } }
    var isSet: Bool { box.withLockedValue { $0 } }
}
