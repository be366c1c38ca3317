import Foundation
import MeshCore
import MeshIdentity
import MeshTesting
import X509
import XCTest

final class CertificateAuthorityTests: XCTestCase {
    func testIssuedSVIDFollowsTheSPIFFEProfile() throws {
        let ca = try CertificateAuthority.create(trustDomain: "mesh.local")
        let key = WorkloadKey()
        let id = try SPIFFEID(trustDomain: "mesh.local", service: ServiceName("api"))
        let now = Date()
        let leaf = try ca.sign(csrPEM: try key.csrPEM(service: ServiceName("api")), as: id, lifetime: 3600, now: now)

        XCTAssertEqual(leaf.uriSANs, ["spiffe://mesh.local/ns/default/sa/api"])
        XCTAssertEqual(leaf.spiffeID, id)
        XCTAssertEqual(try leaf.extensions.basicConstraints, .notCertificateAuthority)
        let usage = try XCTUnwrap(try leaf.extensions.keyUsage)
        XCTAssertTrue(usage.digitalSignature)
        XCTAssertFalse(usage.keyCertSign)
        let eku = try XCTUnwrap(try leaf.extensions.extendedKeyUsage)
        XCTAssertTrue(eku.contains(.serverAuth) && eku.contains(.clientAuth))
        XCTAssertEqual(leaf.notValidAfter.timeIntervalSince(now), 3600, accuracy: 1)
        XCTAssertEqual(leaf.publicKey, key.privateKey.publicKey)
        XCTAssertTrue(ca.certificate.publicKey.isValidSignature(leaf.signature, for: leaf))
    }

    func testCAReloadsFromItsPEMFilesAndRejectsAMismatchedKey() throws {
        let ca = try CertificateAuthority.create(trustDomain: "prod.example")
        let reloaded = try CertificateAuthority(certificatePEM: ca.certificatePEM, privateKeyPEM: ca.privateKeyPEM)
        XCTAssertEqual(reloaded.trustDomain, "prod.example")
        XCTAssertEqual(reloaded.certificate, ca.certificate)
        let other = try CertificateAuthority.create(trustDomain: "prod.example")
        XCTAssertThrowsError(try CertificateAuthority(certificatePEM: ca.certificatePEM, privateKeyPEM: other.privateKeyPEM))
    }

    func testCARefusesMalformedCSRsAndForeignTrustDomains() throws {
        let ca = try CertificateAuthority.create(trustDomain: "mesh.local")
        let id = try SPIFFEID(trustDomain: "mesh.local", service: ServiceName("api"))
        for bad in ["", "garbage", String(repeating: "x", count: 17000)] {
            XCTAssertThrowsError(try ca.sign(csrPEM: bad, as: id, lifetime: 60)) { error in
                XCTAssertEqual((error as? MeshError)?.code, .invalidCSR)
            }
        }
        let foreign = try SPIFFEID(trustDomain: "other.local", service: ServiceName("api"))
        XCTAssertThrowsError(try ca.sign(csrPEM: try WorkloadKey().csrPEM(service: ServiceName("api")), as: foreign, lifetime: 60))
    }

    func testSPIFFEIDParsing() throws {
        let id = try SPIFFEID(parsing: "spiffe://mesh.local/ns/default/sa/api")
        XCTAssertEqual(id.trustDomain, "mesh.local")
        XCTAssertEqual(id.service, try ServiceName("api"))
        XCTAssertNil(try SPIFFEID(parsing: "spiffe://mesh.local/ns/mesh-system/sa/control").service)
        for bad in ["https://mesh.local/x", "spiffe://", "spiffe://MESH/x", "spiffe://mesh.local/a//b", "spiffe://mesh.local/a/../b",
                    "spiffe://mesh.local/x?y", "spiffe://mesh.local/x#y", "spiffe://mesh.local/%41", "spiffe://mesh.local/x/"] {
            XCTAssertThrowsError(try SPIFFEID(parsing: bad), bad)
        }
    }

    func testPeerVerifierAcceptsOnlyTheExpectedIdentityFromTheBundle() async throws {
        let ca = try CertificateAuthority.create(trustDomain: "mesh.local")
        let bundle = try TrustBundle(roots: [ca.certificate])
        let apiID = try SPIFFEID(trustDomain: "mesh.local", service: ServiceName("api"))
        let webID = try SPIFFEID(trustDomain: "mesh.local", service: ServiceName("web"))
        let leaf = try ca.sign(csrPEM: try WorkloadKey().csrPEM(service: ServiceName("api")), as: apiID, lifetime: 600)
        let der = try derBytes(leaf)

        let anyone = SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth)
        guard case .verified(let seen, _) = await anyone.verify(presentedDER: [der]) else { return XCTFail("valid SVID rejected") }
        XCTAssertEqual(seen, apiID)

        let onlyWeb = SPIFFEPeerVerifier(bundle: bundle, expected: [webID], usage: .serverAuth)
        guard case .rejected(let reason) = await onlyWeb.verify(presentedDER: [der]) else { return XCTFail("wrong identity accepted") }
        XCTAssertTrue(reason.contains("expected spiffe://mesh.local/ns/default/sa/web"), reason)

        // The clock is injected: the same SVID is refused once expired.
        let later = SPIFFEPeerVerifier(bundle: bundle, usage: .clientAuth, clock: { Date().addingTimeInterval(3600) })
        guard case .rejected = await later.verify(presentedDER: [der]) else { return XCTFail("expired SVID accepted") }

        let otherCA = try CertificateAuthority.create(trustDomain: "mesh.local")
        let stranger = SPIFFEPeerVerifier(bundle: try TrustBundle(roots: [otherCA.certificate]), usage: .clientAuth)
        guard case .rejected = await stranger.verify(presentedDER: [der]) else { return XCTFail("SVID of another CA accepted") }

        guard case .rejected = await anyone.verify(presentedDER: [[0x30, 0x03, 0x02, 0x01, 0x01]]) else { return XCTFail("garbage accepted") }
        guard case .rejected = await anyone.verify(presentedDER: []) else { return XCTFail("no certificate accepted") }
    }

    func testRenewalHappensAtHalfLifeWithBoundedJitter() {
        let schedule = RenewalSchedule()
        let start = Date(timeIntervalSince1970: 0)
        let end = start.addingTimeInterval(100)
        XCTAssertEqual(schedule.renewalTime(notBefore: start, notAfter: end, random: 0).timeIntervalSince1970, 50)
        XCTAssertEqual(schedule.renewalTime(notBefore: start, notAfter: end, random: 1).timeIntervalSince1970, 55, accuracy: 0.001)
        XCTAssertEqual(schedule.renewalTime(notBefore: start, notAfter: end, random: -1).timeIntervalSince1970, 45, accuracy: 0.001)
        // Retries back off but stay well inside the remaining lifetime.
        let delay = schedule.retryDelay(attempt: 10, notAfter: end, now: start.addingTimeInterval(90))
        XCTAssertLessThanOrEqual(delay, 1.0)
    }

    private func derBytes(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }
}

import SwiftASN1
