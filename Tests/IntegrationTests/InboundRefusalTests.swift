import Foundation
import MeshCore
import MeshTesting
import NIOSSL
import XCTest

/// The inbound port accepts only TLS 1.3 peers presenting a valid SVID of our trust domain
/// from the mesh CA. Every refusal is a closed connection; the app never sees a request.
final class InboundRefusalTests: XCTestCase {
    func testInboundRefusesEveryBadPeerAndAcceptsAGoodOne() async throws {
        let mesh = try await TestMesh.start()
        let app = try await TestApp.start("api")
        do {
            let api = try await mesh.proxy("api", app: app.address)
            let meshCA = try CertificateFactory.meshCA(dataDir: mesh.dataDir)
            let otherCA = try CertificateFactory.otherCA()
            let goodID = "spiffe://mesh.local/ns/default/sa/web"

            // Positive control: a well-formed SVID from the mesh CA gets an answer, so the
            // refusals below are the verifier's doing, not a broken probe.
            let good = try CertificateFactory.leaf(issuer: meshCA, uris: [goodID])
            let accepted = try await TLSProbe.tls(api.inbound, chainPEM: good.chainPEM, keyPEM: good.keyPEM)
            guard case .httpResponse(let text) = accepted, text.hasPrefix("HTTP/1.1 200") else {
                return XCTFail("a valid SVID was not served: \(accepted)\n\(mesh.logs)")
            }
            let servedBefore = app.requests.count
            XCTAssertEqual(servedBefore, 1)

            var cases: [(String, TLSProbe.Outcome)] = []
            cases.append(("plaintext HTTP", try await TLSProbe.plaintext(api.inbound)))
            cases.append(("TLS without a client certificate", try await TLSProbe.tls(api.inbound, chainPEM: nil, keyPEM: nil)))
            let foreign = try CertificateFactory.leaf(issuer: otherCA, uris: [goodID])
            cases.append(("certificate from another CA", try await TLSProbe.tls(api.inbound, chainPEM: foreign.chainPEM, keyPEM: foreign.keyPEM)))
            let expired = try CertificateFactory.leaf(issuer: meshCA, uris: [goodID], notBefore: Date().addingTimeInterval(-7200),
                                                      notAfter: Date().addingTimeInterval(-3600))
            cases.append(("expired SVID", try await TLSProbe.tls(api.inbound, chainPEM: expired.chainPEM, keyPEM: expired.keyPEM)))
            let notYet = try CertificateFactory.leaf(issuer: meshCA, uris: [goodID], notBefore: Date().addingTimeInterval(3600),
                                                     notAfter: Date().addingTimeInterval(7200))
            cases.append(("SVID not yet valid", try await TLSProbe.tls(api.inbound, chainPEM: notYet.chainPEM, keyPEM: notYet.keyPEM)))
            let otherDomain = try CertificateFactory.leaf(issuer: meshCA, uris: ["spiffe://evil.example/ns/default/sa/web"])
            cases.append(("SVID of another trust domain", try await TLSProbe.tls(api.inbound, chainPEM: otherDomain.chainPEM, keyPEM: otherDomain.keyPEM)))
            let noURI = try CertificateFactory.leaf(issuer: meshCA, uris: [], dnsNames: ["web.mesh.local"])
            cases.append(("leaf with no URI SAN", try await TLSProbe.tls(api.inbound, chainPEM: noURI.chainPEM, keyPEM: noURI.keyPEM)))
            let twoURIs = try CertificateFactory.leaf(issuer: meshCA, uris: [goodID, "spiffe://mesh.local/ns/default/sa/admin"])
            cases.append(("leaf with two URI SANs", try await TLSProbe.tls(api.inbound, chainPEM: twoURIs.chainPEM, keyPEM: twoURIs.keyPEM)))
            let httpsURI = try CertificateFactory.leaf(issuer: meshCA, uris: ["https://web.mesh.local/"])
            cases.append(("URI SAN that is not SPIFFE", try await TLSProbe.tls(api.inbound, chainPEM: httpsURI.chainPEM, keyPEM: httpsURI.keyPEM)))
            let caLeaf = try CertificateFactory.leaf(issuer: meshCA, uris: [goodID], isCA: true)
            cases.append(("leaf with CA:TRUE", try await TLSProbe.tls(api.inbound, chainPEM: caLeaf.chainPEM, keyPEM: caLeaf.keyPEM)))
            cases.append(("TLS 1.2 with a valid SVID", try await TLSProbe.tls(api.inbound, chainPEM: good.chainPEM, keyPEM: good.keyPEM,
                                                                                maxVersion: .tlsv12)))

            for (name, outcome) in cases {
                XCTAssertEqual(outcome, .closedWithoutResponse, "\(name) was not refused")
            }
            XCTAssertEqual(app.requests.count, servedBefore, "a refused connection reached the app")
            print("bad-certificate cases tried and refused: \(cases.filter { $0.1 == .closedWithoutResponse }.count) of \(cases.count)")
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        await app.stop()
        await mesh.shutdown()
    }
}
