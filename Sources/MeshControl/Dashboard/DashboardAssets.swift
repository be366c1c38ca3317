import MeshTransport
import NIOCore
import NIOHTTP1

/// The dashboard's files (`index.html`, `dashboard.css`, `dashboard.js` next to this file),
/// compiled into the binary by SwiftPM's `embedInCode`, so that `mesh` stays one file to
/// copy and the page never loads anything from elsewhere (no CDN: the machines a mesh runs
/// on often have no internet).
///
/// The files hold no data; the script reads everything from the admin API with the admin
/// token, which the page takes from its URL fragment (never sent to a server) and keeps in
/// the tab's session storage.
enum DashboardAssets {
    static let root = "/dashboard/"

    /// The response for a dashboard path, or nil when the path is not one of the dashboard's.
    static func response(for path: String) -> APIResponse? {
        switch path {
        case "/", "/dashboard":
            return APIResponse(status: .found, headers: ["location": root], body: .bytes(ByteBuffer()))
        case root, root + "index.html":
            return file(PackageResources.index_html, type: "text/html; charset=utf-8")
        case root + "dashboard.css":
            return file(PackageResources.dashboard_css, type: "text/css; charset=utf-8")
        case root + "dashboard.js":
            return file(PackageResources.dashboard_js, type: "text/javascript; charset=utf-8")
        default:
            return nil
        }
    }

    /// Headers that keep the page to its own files and its own API: no inline script, no
    /// framing (clickjacking), no referrer, no caching of a page an operator may reload
    /// after an upgrade.
    private static func file(_ bytes: [UInt8], type: String) -> APIResponse {
        let headers: HTTPHeaders = [
            "content-type": type,
            "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
        ]
        return APIResponse(status: .ok, headers: headers, body: .bytes(ByteBuffer(bytes: bytes)))
    }
}
