import Foundation
import MeshCore
import MeshPolicy
import XCTest

final class PolicyEvaluatorTests: XCTestCase {
    let api = try! ServiceName("api")  // test fixture constant, not network input
    let web = "spiffe://mesh.local/ns/default/sa/web"
    let batch = "spiffe://mesh.local/ns/default/sa/batch"

    private func request(from caller: String?, method: String? = "GET", path: String? = "/orders", port: Int = 8080,
                         callerLabels: [String: String] = [:], address: String? = "10.1.2.3",
                         headers: [String: [String]] = [:], now: Date = Date()) -> RequestAttributes {
        RequestAttributes(destination: api, destinationLabels: ["app": "api", "env": "prod"], callerIdentity: caller,
                          callerService: caller.flatMap { try? ServiceName(String($0.split(separator: "/").last ?? "")) },
                          callerLabels: callerLabels, callerAddress: address, port: port, method: method, path: path,
                          headers: headers, now: now)
    }

    /// Raw TCP streams have no HTTP attributes, ever: both kinds of rule fail closed.
    func testOpaqueStreamsFailClosedOnHTTPConditions() {
        let allowGet = AuthorizationPolicy(name: "web-gets", target: .service(api), rules: [
            .init(from: [.init(identities: [IdentityMatch(web)])], to: [.init(methods: ["GET"])]),
        ])
        let allowBatch = AuthorizationPolicy(name: "batch-any", target: .service(api), rules: [
            .init(from: [.init(identities: [IdentityMatch(batch)])]),
        ])
        let denyAdmin = AuthorizationPolicy(name: "batch-no-admin", target: .service(api), action: .deny, rules: [
            .init(from: [.init(identities: [IdentityMatch(batch)])], to: [.init(paths: [PathMatch("/admin/*")])]),
        ])
        let evaluator = PolicyEvaluator(policies: [allowGet, allowBatch, denyAdmin])
        func stream(from caller: String) -> RequestAttributes {
            var attributes = request(from: caller, method: nil, path: nil)
            attributes.opaque = true
            return attributes
        }
        // An allow that needs a method cannot allow a stream.
        let web = evaluator.evaluate(stream(from: self.web))
        XCTAssertFalse(web.allowed)
        XCTAssertTrue(web.explanation.joined().contains("opaque TCP stream"), "\(web.explanation)")
        // A deny whose HTTP conditions cannot be checked covers the whole stream.
        let batch = evaluator.evaluate(stream(from: self.batch))
        XCTAssertFalse(batch.allowed)
        XCTAssertEqual(batch.policy, "batch-no-admin")
        // Over HTTP the same rules decide per request.
        XCTAssertTrue(evaluator.evaluate(request(from: self.batch, path: "/orders")).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: self.batch, path: "/admin/x")).allowed)
    }

    func testDefaultDenyWithoutAMatchingAllow() {
        let evaluator = PolicyEvaluator(policies: [])
        let decision = evaluator.evaluate(request(from: web))
        XCTAssertFalse(decision.allowed)
        XCTAssertEqual(decision.code, .deniedNoMatchingAllow)
    }

    func testAllowByIdentityMethodAndPathGlob() throws {
        let policy = AuthorizationPolicy(name: "web-reads-orders", target: .labels(try LabelSelector(parsing: "app=api, env in (prod,staging)")), rules: [
            .init(from: [.init(identities: [IdentityMatch(web)])],
                  to: [.init(methods: ["GET"], paths: [PathMatch("/orders"), PathMatch("/orders/*"), PathMatch("/users/*/orders")])]),
        ])
        let evaluator = PolicyEvaluator(policies: [policy])
        XCTAssertTrue(evaluator.evaluate(request(from: web)).allowed)
        XCTAssertTrue(evaluator.evaluate(request(from: web, path: "/orders/17/items")).allowed)
        XCTAssertTrue(evaluator.evaluate(request(from: web, path: "/users/9/orders")).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, path: "/users/9/x/orders")).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, method: "DELETE")).allowed)
        let denied = evaluator.evaluate(request(from: batch))
        XCTAssertFalse(denied.allowed)
        XCTAssertTrue(denied.explanation.joined().contains("spiffe://mesh.local/ns/default/sa/batch is not \(web)"), "\(denied.explanation)")
    }

    func testDenyWinsOverAllow() throws {
        let allowAll = AuthorizationPolicy(name: "allow-mesh", target: .service(api), rules: [
            .init(from: [.init(identities: [IdentityMatch("spiffe://mesh.local/ns/default/sa/*")])]),
        ])
        let denyAdmin = AuthorizationPolicy(name: "no-admin", target: .all, action: .deny, rules: [
            .init(to: [.init(paths: [PathMatch("/admin/*")])]),
        ])
        let evaluator = PolicyEvaluator(policies: [allowAll, denyAdmin])
        XCTAssertTrue(evaluator.evaluate(request(from: web)).allowed)
        let decision = evaluator.evaluate(request(from: web, path: "/admin/users"))
        XCTAssertFalse(decision.allowed)
        XCTAssertEqual(decision.code, .deniedByPolicy)
        XCTAssertEqual(decision.policy, "no-admin")
    }

    func testAuditModeRecordsWouldDenyButChangesNothing() {
        let allow = AuthorizationPolicy(name: "allow-web", target: .service(api), rules: [.init(from: [.init(identities: [IdentityMatch(web)])])])
        let auditDeny = AuthorizationPolicy(name: "trial-no-delete", target: .service(api), action: .deny, mode: .audit, rules: [
            .init(to: [.init(methods: ["DELETE"])]),
        ])
        let decision = PolicyEvaluator(policies: [allow, auditDeny]).evaluate(request(from: web, method: "DELETE"))
        XCTAssertTrue(decision.allowed)
        XCTAssertEqual(decision.wouldDeny, ["trial-no-delete"])

        // A mesh in audit default lets unmatched callers through, recording default deny.
        let migrating = PolicyEvaluator(policies: [allow], defaultMode: .audit).evaluate(request(from: batch))
        XCTAssertTrue(migrating.allowed)
        XCTAssertEqual(migrating.code, .allowedAuditDefault)
        XCTAssertEqual(migrating.wouldDeny, ["default-deny"])
    }

    func testNonMeshCallersByCIDRAndUnauthenticated() throws {
        let legacy = AuthorizationPolicy(name: "legacy-lb", target: .service(api), rules: [
            .init(from: [.init(unauthenticated: true, ipBlocks: [try CIDR(parsing: "10.1.0.0/16"), try CIDR(parsing: "fd00::/8")])]),
        ])
        let evaluator = PolicyEvaluator(policies: [legacy])
        XCTAssertTrue(evaluator.evaluate(request(from: nil, address: "10.1.2.3")).allowed)
        XCTAssertTrue(evaluator.evaluate(request(from: nil, address: "fd00::1")).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: nil, address: "10.2.0.1")).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, address: "10.1.2.3")).allowed, "a mesh caller is not unauthenticated")
        XCTAssertThrowsError(try CIDR(parsing: "10.0.0.0/33"))
        XCTAssertThrowsError(try CIDR(parsing: "not-an-ip/8"))
    }

    func testCallerLabelsPortsHeadersAndExpiry() throws {
        let now = Date()
        let timeBound = AuthorizationPolicy(name: "oncall-debug", target: .service(api), rules: [
            .init(from: [.init(labels: try LabelSelector(parsing: "team=payments, tier!=debug, has(oncall)"))],
                  to: [.init(ports: [8080], headers: [HeaderMatch(name: "X-Ticket", value: nil)])]),
        ], expires: now.addingTimeInterval(60))
        let evaluator = PolicyEvaluator(policies: [timeBound])
        let labels = ["team": "payments", "oncall": "yes"]
        XCTAssertTrue(evaluator.evaluate(request(from: web, callerLabels: labels, headers: ["x-ticket": ["T-1"]], now: now)).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, callerLabels: labels, headers: [:], now: now)).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, port: 9090, callerLabels: labels, headers: ["x-ticket": ["T-1"]], now: now)).allowed)
        XCTAssertFalse(evaluator.evaluate(request(from: web, callerLabels: labels.merging(["tier": "debug"]) { $1 },
                                                  headers: ["x-ticket": ["T-1"]], now: now)).allowed)
        let lapsed = evaluator.evaluate(request(from: web, callerLabels: labels, headers: ["x-ticket": ["T-1"]], now: now.addingTimeInterval(61)))
        XCTAssertFalse(lapsed.allowed, "time-bound access lapses by itself")
        XCTAssertTrue(lapsed.explanation.joined().contains("expired"))
    }

    func testL4DecisionsIgnoreL7OnlyRulesAndSayWhy() {
        let l7 = AuthorizationPolicy(name: "get-only", target: .service(api), rules: [.init(to: [.init(methods: ["GET"])])])
        let evaluator = PolicyEvaluator(policies: [l7])
        XCTAssertTrue(evaluator.needsL7(for: api, labels: [:]))
        let l4 = evaluator.evaluate(request(from: web, method: nil, path: nil))
        XCTAssertFalse(l4.allowed)
        XCTAssertTrue(l4.explanation.joined().contains("needs HTTP attributes"), "\(l4.explanation)")
    }

    func testLabelSelectorSyntax() throws {
        let selector = try LabelSelector(parsing: "app=api, env in (prod, staging), tier!=debug, has(pci), !has(legacy), zone notin (eu-3)")
        XCTAssertTrue(selector.matches(["app": "api", "env": "staging", "pci": "", "zone": "eu-1"]))
        XCTAssertFalse(selector.matches(["app": "api", "env": "dev", "pci": ""]))
        XCTAssertFalse(selector.matches(["app": "api", "env": "prod", "pci": "", "legacy": "1"]))
        XCTAssertFalse(selector.matches(["app": "api", "env": "prod", "pci": "", "zone": "eu-3"]))
        for bad in ["", "env in prod", "env in ()", "has()", "=x", "a b c"] {
            XCTAssertThrowsError(try LabelSelector(parsing: bad), bad)
        }
    }
}

/// Findings of the security review, kept as regressions.
final class PolicyHardeningTests: XCTestCase {
    let api = try! ServiceName("api")  // test fixture constant

    func testTrailingSlashDoesNotEscapeExactOrGlobRules() {
        let deny = AuthorizationPolicy(name: "no-admin", target: .all, action: .deny, rules: [
            .init(to: [.init(paths: [PathMatch("/admin"), PathMatch("/users/*/orders")])]),
        ])
        let evaluator = PolicyEvaluator(policies: [deny, AuthorizationPolicy(name: "all", target: .all, rules: [.init()])])
        for path in ["/admin", "/admin/", "/users/1/orders", "/users/1/orders/"] {
            let decision = evaluator.evaluate(RequestAttributes(destination: api, callerIdentity: "spiffe://mesh.local/ns/default/sa/web",
                                                                port: 80, method: "GET", path: path))
            XCTAssertFalse(decision.allowed, path)
        }
    }

    func testIdentityPrefixesEndAtASegmentBoundary() throws {
        func compile(_ identity: String) throws -> AuthorizationPolicy {
            try PolicyCompiler.compile(PolicyDocument(name: "p", spec: .init(rules: [.init(from: [.init(identities: [identity])])])))
        }
        XCTAssertThrowsError(try compile("spiffe://mesh.local/ns/default/sa/web*"))
        XCTAssertThrowsError(try compile("spiffe://Mesh.Local/ns/default/sa/web"))
        XCTAssertThrowsError(try compile("spiffe://mesh.local/ns/*/sa/web"))
        let prefix = try compile("spiffe://mesh.local/ns/default/sa/*")
        let source = try XCTUnwrap(prefix.rules.first?.from.first?.identities.first)
        XCTAssertTrue(source.matches("spiffe://mesh.local/ns/default/sa/web-admin"))
        XCTAssertFalse(source.matches("spiffe://mesh.local/ns/defaultx/sa/web"))
        XCTAssertThrowsError(try PolicyCompiler.compile(PolicyDocument(name: "p", spec: .init(rules: [.init(to: [.init(paths: ["/admin*"])])]))))
    }

    func testNegativeLabelExpressionsDoNotAdmitAnonymousCallers() throws {
        let policy = AuthorizationPolicy(name: "no-debug", target: .all, rules: [
            .init(from: [.init(labels: try LabelSelector(parsing: "tier!=debug"))]),
        ])
        let evaluator = PolicyEvaluator(policies: [policy])
        XCTAssertFalse(evaluator.evaluate(RequestAttributes(destination: api, callerIdentity: nil, callerAddress: "10.0.0.1", port: 80)).allowed)
        XCTAssertTrue(evaluator.evaluate(RequestAttributes(destination: api, callerIdentity: "spiffe://mesh.local/ns/default/sa/web",
                                                           callerService: try ServiceName("web"), port: 80)).allowed)
    }

    func testCIDRsRejectEmptyInputAndUnderstandIPv4MappedAddresses() throws {
        for bad in ["", "/", "/8", "10.0.0.0/", "10.0.0.0/x"] {
            XCTAssertThrowsError(try CIDR(parsing: bad), bad)
        }
        let block = try CIDR(parsing: "10.1.0.0/16")
        XCTAssertTrue(block.contains("::ffff:10.1.2.3"))
        XCTAssertFalse(block.contains("::ffff:10.2.0.1"))
    }
}
