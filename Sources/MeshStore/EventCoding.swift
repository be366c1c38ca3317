import Foundation
import MeshCore

/// How every store keeps a registry event in its change log: JSON, dates as seconds (so a
/// heartbeat time survives to the sub-second), decoded with a clear error.
enum EventCoding {
    static func encode(_ event: RegistryEvent) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .secondsSince1970
        return String(decoding: try encoder.encode(event), as: UTF8.self)
    }

    static func decode(_ text: String?, version: UInt64) throws -> RegistryEvent {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        guard let text, let event = try? decoder.decode(RegistryEvent.self, from: Data(text.utf8)) else {
            throw MeshError(.storeFailure, "the stored registry event \(version) does not decode; the store may be damaged or written by a newer mesh")
        }
        return event
    }

    /// The event that announces `change` at `version`, for the instance as stored.
    static func event(for change: RegistryChange, version: UInt64) -> RegistryEvent {
        switch change {
        case .upsert(let instance): RegistryEvent(version: version, kind: .upsert(instance))
        case .remove(let id), .expire(let id, _): RegistryEvent(version: version, kind: .remove(id: id))
        case .trust(let update): RegistryEvent(version: version, kind: .trust(update))
        }
    }

    /// How many events the log keeps: a control plane further behind reloads the whole state.
    static let logLimit: UInt64 = 1000
}

/// How both stores keep an instance's reported trust roots: a comma-separated list of
/// fingerprints (hex, so no comma inside one).
enum InstanceCoding {
    static func roots(_ roots: [String]?) -> String? { roots.map { $0.joined(separator: ",") } }
    static func roots(_ text: String?) -> [String]? {
        text.map { $0.isEmpty ? [] : $0.split(separator: ",").map(String.init) }
    }
}
