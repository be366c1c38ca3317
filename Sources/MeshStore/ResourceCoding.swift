import Foundation
import MeshCore

/// How every store keeps a resource: canonical JSON (sorted keys, so that re-applying an
/// unchanged resource compares equal and records nothing), decoded with a clear error.
enum ResourceCoding {
    static func encode(_ resource: MeshResource) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: try encoder.encode(resource), as: UTF8.self)
    }

    /// `what`: kind/name, for the error.
    static func decode(_ text: String?, what: String) throws -> MeshResource {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let text, let resource = try? decoder.decode(MeshResource.self, from: Data(text.utf8)) else {
            throw MeshError(.storeFailure, "the stored resource \(what) does not decode; the store may be damaged or written by a newer mesh")
        }
        return resource
    }
}
