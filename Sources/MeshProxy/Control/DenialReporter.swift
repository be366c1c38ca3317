import Foundation
import Logging
import MeshCore
import MeshTransport
import NIOConcurrencyHelpers

/// Denials waiting to be reported: appended on the event loop when a request is refused (a
/// lock per denial, never per allowed request), taken by the reporter. Keeps the newest 1000.
final class DenialBuffer: Sendable {
    private let records = NIOLockedValueBox<[DenialRecord]>([])
    private let capacity = 1000

    func add(_ record: DenialRecord) {
        records.withLockedValue { records in
            records.append(record)
            if records.count > capacity { records.removeFirst(records.count - capacity) }
        }
    }

    func takeAll() -> [DenialRecord] {
        records.withLockedValue { records in
            defer { records.removeAll(keepingCapacity: true) }
            return records
        }
    }
}

/// Sends denials to the control plane twice a second, so that `mesh explain --request-id`
/// can explain them. Best effort: a dead control plane costs reports, never requests.
struct DenialReporter: Sendable {
    let identity: IdentityManager
    let buffer: DenialBuffer
    let logger: Logger

    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(500))
            let batch = buffer.takeAll()
            guard !batch.isEmpty else { continue }
            do {
                _ = try await identity.controlClient().send(.POST, ControlAPI.decisionsPath, json: batch).decode([String: Bool].self)
            } catch {
                logger.debug("could not report denials", metadata: ["count": "\(batch.count)", "error": "\(error)"])
            }
        }
    }
}
