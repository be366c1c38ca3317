import MeshCore
import MeshPolicy
import XCTest

/// Known authorization-bypass tricks against path-based rules. Each row: the request target,
/// and what the mesh must do — refuse it (400), or normalize it to a path that a policy
/// `deny /admin/*` (and `allow /public/*`) then judges correctly.
final class BypassTableTests: XCTestCase {
    enum Expected: Equatable {
        case rejected
        /// Normalized to this path; `deniedByAdminRule` says whether `deny /admin, /admin/*` catches it.
        case path(String, deniedByAdminRule: Bool)
    }

    static let table: [(String, Expected)] = [
        // Dot segments in every disguise.
        ("/admin/../admin/users", .path("/admin/users", deniedByAdminRule: true)),
        ("/public/../admin/users", .path("/admin/users", deniedByAdminRule: true)),
        ("/public/./../admin", .path("/admin", deniedByAdminRule: true)),
        ("/./admin", .path("/admin", deniedByAdminRule: true)),
        ("/admin/.", .path("/admin/", deniedByAdminRule: true)),
        ("/../admin", .path("/admin", deniedByAdminRule: true)),
        ("/../../../admin", .path("/admin", deniedByAdminRule: true)),
        ("/public/%2e%2e/admin", .path("/admin", deniedByAdminRule: true)),
        ("/public/%2E%2E/admin", .path("/admin", deniedByAdminRule: true)),
        ("/public/.%2e/admin", .path("/admin", deniedByAdminRule: true)),
        ("/public/%2e./admin", .path("/admin", deniedByAdminRule: true)),
        ("/%2e/admin", .path("/admin", deniedByAdminRule: true)),
        ("/public/..%2fadmin", .rejected),
        ("/public/..%5cadmin", .rejected),
        ("/public/..\\admin", .rejected),
        ("/public\\..\\admin", .rejected),
        // Slashes.
        ("//admin", .path("/admin", deniedByAdminRule: true)),
        ("///admin//users", .path("/admin/users", deniedByAdminRule: true)),
        ("/admin%2F", .rejected),
        ("/admin%2fusers", .rejected),
        ("/%2Fadmin", .rejected),
        ("/admin%5Cusers", .rejected),
        ("/admin/", .path("/admin/", deniedByAdminRule: true)),
        ("/public//../admin", .path("/admin", deniedByAdminRule: true)),
        // Encoded unreserved characters are the same characters.
        ("/%61dmin", .path("/admin", deniedByAdminRule: true)),
        ("/%61%64%6d%69%6e/users", .path("/admin/users", deniedByAdminRule: true)),
        ("/adm%69n", .path("/admin", deniedByAdminRule: true)),
        ("/%41DMIN", .path("/ADMIN", deniedByAdminRule: false)),
        ("/admin%2D1", .path("/admin-1", deniedByAdminRule: false)),
        ("/admin%7Euser", .path("/admin~user", deniedByAdminRule: false)),
        // Case matters in paths: /ADMIN is another resource, not a bypass of /admin.
        ("/ADMIN", .path("/ADMIN", deniedByAdminRule: false)),
        ("/Admin/users", .path("/Admin/users", deniedByAdminRule: false)),
        // Path parameters, NUL, fragments.
        ("/admin;jsessionid=1", .rejected),
        ("/public;/../admin", .rejected),
        ("/admin%3Bx", .rejected),
        ("/admin%00", .rejected),
        ("/admin%00.html", .rejected),
        ("/admin\u{0}", .rejected),
        ("/admin#frag", .rejected),
        ("/public#/../admin", .rejected),
        // Trailing dots and slashes.
        ("/admin.", .path("/admin.", deniedByAdminRule: false)),
        ("/admin./users", .path("/admin./users", deniedByAdminRule: false)),
        ("/admin/users/", .path("/admin/users/", deniedByAdminRule: true)),
        ("/admin/users/.", .path("/admin/users/", deniedByAdminRule: true)),
        ("/admin/users/..", .path("/admin/", deniedByAdminRule: true)),
        // Overlong and invalid UTF-8 (an overlong "/" or "." must not sneak through).
        ("/public/%C0%AF../admin", .rejected),
        ("/public/%C0%AE%C0%AE/admin", .rejected),
        ("/public/%E0%80%AF/admin", .rejected),
        ("/%FF", .rejected),
        ("/%C3", .rejected),
        ("/caf%C3%A9", .path("/caf%C3%A9", deniedByAdminRule: false)),
        ("/caf%c3%a9", .path("/caf%C3%A9", deniedByAdminRule: false)),
        // Malformed escapes and non-origin forms.
        ("/admin%", .rejected),
        ("/admin%4", .rejected),
        ("/admin%G1", .rejected),
        ("admin", .rejected),
        ("*", .rejected),
        ("http://internal/admin", .rejected),
        // The query is not part of the path.
        ("/public?next=/admin", .path("/public", deniedByAdminRule: false)),
        ("/admin?x=/public", .path("/admin", deniedByAdminRule: true)),
    ]

    func testEveryKnownBypassAttemptHasItsExpectedOutcome() throws {
        XCTAssertGreaterThanOrEqual(Self.table.count, 50)
        let denyAdmin = AuthorizationPolicy(name: "no-admin", target: .all, action: .deny, rules: [
            .init(to: [.init(paths: [PathMatch("/admin"), PathMatch("/admin/*")])]),
        ])
        let allowAll = AuthorizationPolicy(name: "allow", target: .all, rules: [.init()])
        let evaluator = PolicyEvaluator(policies: [denyAdmin, allowAll])
        let service = try ServiceName("api")
        for (target, expected) in Self.table {
            switch (PathNormalizer.normalize(target), expected) {
            case (.failure, .rejected):
                continue
            case (.success(let normalized), .path(let path, let denied)):
                XCTAssertEqual(normalized.path, path, "\(target)")
                let decision = evaluator.evaluate(RequestAttributes(destination: service, callerIdentity: "spiffe://mesh.local/ns/default/sa/web",
                                                                    port: 80, method: "GET", path: normalized.path))
                XCTAssertEqual(!decision.allowed, denied, "\(target) → \(normalized.path): \(decision.explanation)")
            case (let outcome, _):
                XCTFail("\(target): expected \(expected), got \(outcome)")
            }
        }
        print("bypass cases tried: \(Self.table.count)")
    }
}
