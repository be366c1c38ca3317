import Foundation
import MeshCore
import MeshIdentity
import NIOCore
import NIOHTTP1

/// A fully read HTTP request handed to an API handler (control plane, admin endpoints).
/// The data path never builds these: it streams parts through channel handlers instead.
public struct APIRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    public var query: [String: String]
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    /// The caller's verified SPIFFE ID on an mTLS connection, nil otherwise.
    public var peer: SPIFFEID?
    /// The caller's IP address as seen by the socket.
    public var remoteAddress: String?

    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer,
                peer: SPIFFEID?, remoteAddress: String?) {
        self.method = method
        self.headers = headers
        self.body = body
        self.peer = peer
        self.remoteAddress = remoteAddress
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        self.path = String(parts.first ?? "")
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                let value = kv.count == 2 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
                query[key] = value
            }
        }
        self.query = query
    }

    /// Decodes the JSON body.
    /// - Throws: ``MeshError`` `invalid-request` naming the type expected.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        do {
            return try JSONCoding.decoder.decode(T.self, from: Data(body.readableBytesView))
        } catch let error as MeshError {
            throw error
        } catch let DecodingError.dataCorrupted(context) {
            throw MeshError(.invalidRequest, "request body is not valid JSON for \(T.self): \(context.debugDescription)")
        } catch let DecodingError.keyNotFound(key, _) {
            throw MeshError(.invalidRequest, "request body lacks field '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw MeshError(.invalidRequest, "request field '\(field)' has the wrong type")
        } catch {
            throw MeshError(.invalidRequest, "request body is not valid JSON for \(T.self)")
        }
    }
}

/// What an API handler answers: a whole body, or a stream of chunks (the registry watch).
public struct APIResponse: Sendable {
    public enum Body: Sendable {
        case bytes(ByteBuffer)
        case stream(AsyncStream<ByteBuffer>)
    }

    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: Body

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: Body) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> APIResponse {
        let data = (try? JSONCoding.encoder.encode(value)) ?? Data("{}".utf8)
        return APIResponse(status: status, headers: ["content-type": "application/json"],
                           body: .bytes(ByteBuffer(bytes: data + Data("\n".utf8))))
    }

    public static func text(_ text: String, status: HTTPResponseStatus = .ok) -> APIResponse {
        APIResponse(status: status, headers: ["content-type": "text/plain; charset=utf-8"],
                    body: .bytes(ByteBuffer(string: text)))
    }

    /// Maps an error to its status and the common error body.
    public static func error(_ error: Error) -> APIResponse {
        let meshError = (error as? MeshError) ?? MeshError(.unavailable, "internal error: \(error)")
        return .json(ControlAPI.ErrorBody(code: meshError.code.rawValue, message: meshError.message),
                     status: status(for: meshError.code))
    }

    public static func status(for code: MeshError.Code) -> HTTPResponseStatus {
        switch code {
        case .unauthenticated, .tokenUnknown, .tokenExpired, .tokenUsed: return .unauthorized
        case .forbidden: return .forbidden
        case .notFound: return .notFound
        case .unavailable, .storeFailure: return .serviceUnavailable
        default: return .badRequest
        }
    }
}

/// The JSON settings every API uses: ISO 8601 dates, sorted keys for stable output.
public enum JSONCoding {
    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
