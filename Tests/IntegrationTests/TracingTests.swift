import Foundation
import MeshCore
import MeshTesting
import XCTest

/// A span per hop, exported over OTLP/HTTP to a receiver built on the official
/// `opentelemetry-proto` classes: one trace through three services with the right parents.
final class TracingTests: XCTestCase {
    private struct ExportedSpan: Decodable {
        var service: String
        var trace_id: String
        var span_id: String
        var parent_span_id: String
        var name: String
        var kind: Int
        var attributes: [String: AnyValue]
        struct AnyValue: Decodable {
            var text: String?
            var number: Int?
            init(from decoder: Decoder) throws {
                let container = try decoder.singleValueContainer()
                text = try? container.decode(String.self)
                number = try? container.decode(Int.self)
            }
        }
    }
    private static let server = 2, client = 3   // OTLP Span.SpanKind

    func testOneTraceThroughThreeServicesWithParentAndChildSpans() async throws {
        let receiverScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/otlp_receiver.py")
        guard let python = Self.pythonWithOTLPProto() else {
            if ProcessInfo.processInfo.environment["MESH_REQUIRE_TOOLS"] == "1" {
                return XCTFail("python3 with opentelemetry-proto is missing; pip install opentelemetry-proto (.ci/run does)")
            }
            throw XCTSkip("python3 module opentelemetry-proto not installed (pip install opentelemetry-proto)")
        }
        let mesh = try await TestMesh.start(defaultPolicy: "audit")
        let receiver = Process()
        var apps: [TestApp] = []
        do {
            let port = try await FreePort.find()
            let spansFile = mesh.directory.appendingPathComponent("spans.jsonl")
            receiver.executableURL = URL(fileURLWithPath: python)
            receiver.arguments = [receiverScript.path, "\(port)", spansFile.path]
            let output = Pipe()
            receiver.standardOutput = output
            try receiver.run()
            _ = output.fileHandleForReading.availableData   // "ready"
            let tracing = ["--trace-endpoint", "http://127.0.0.1:\(port)/v1/traces", "--trace-sampling", "1"]

            // c ← b ← a: b's app calls c through b's sidecar, passing traceparent on.
            let cApp = try await TestApp.start("c")
            apps.append(cApp)
            _ = try await mesh.proxy("c", app: cApp.address, extra: tracing)
            let bAppPort = try await FreePort.find()
            let b = try await mesh.proxy("b", app: HostPort(host: "127.0.0.1", port: bAppPort), extra: tracing)
            apps.append(try await TestApp.start("b", port: bAppPort, next: (b.outbound, "c")))
            let a = try await mesh.proxy("a", app: HostPort(host: "127.0.0.1", port: 9), extra: tracing)

            let response = try await eventually(timeout: .seconds(5), interval: .milliseconds(50)) { () -> String in
                let text = try await callThroughMesh(a.outbound, service: "b", path: "/chain").text
                guard text == "hello from b, then hello from c\n" else { throw TestFailure("got \(text)") }
                return text
            }
            XCTAssertEqual(response, "hello from b, then hello from c\n")

            let spans = try await eventually(timeout: .seconds(15), interval: .milliseconds(200)) { () -> [ExportedSpan] in
                let lines = ((try? String(contentsOf: spansFile, encoding: .utf8)) ?? "").split(separator: "\n")
                let spans = try lines.map { try JSONDecoder().decode(ExportedSpan.self, from: Data($0.utf8)) }
                guard let root = spans.first(where: { $0.service == "a" && $0.parent_span_id.isEmpty }),
                      spans.filter({ $0.trace_id == root.trace_id }).count >= 4 else {
                    throw TestFailure("spans so far: \(lines.joined(separator: "\n"))")
                }
                return spans.filter { $0.trace_id == root.trace_id }
            }
            XCTAssertEqual(spans.count, 4, "one span per hop: a out, b in, b out, c in")
            func span(_ service: String, _ kind: Int) throws -> ExportedSpan {
                try XCTUnwrap(spans.first { $0.service == service && $0.kind == kind }, "no \(service) span of kind \(kind)")
            }
            let aOut = try span("a", Self.client), bIn = try span("b", Self.server)
            let bOut = try span("b", Self.client), cIn = try span("c", Self.server)
            XCTAssertEqual(aOut.parent_span_id, "")
            XCTAssertEqual(bIn.parent_span_id, aOut.span_id)
            XCTAssertEqual(bOut.parent_span_id, bIn.span_id, "b's app passed the inbound span's context on")
            XCTAssertEqual(cIn.parent_span_id, bOut.span_id)
            XCTAssertEqual(aOut.name, "GET b")
            XCTAssertEqual(cIn.name, "GET c")
            XCTAssertEqual(bIn.attributes["mesh.source.identity"]?.text, "spiffe://mesh.local/ns/default/sa/a")
            XCTAssertEqual(cIn.attributes["mesh.destination.identity"]?.text, "spiffe://mesh.local/ns/default/sa/c")
            XCTAssertEqual(cIn.attributes["http.response.status_code"]?.number, 200)
            XCTAssertEqual(aOut.attributes["url.path"]?.text, "/chain")

            // A caller instrumented with B3 joins the same kind of trace (W3C from there on).
            var b3Client = APIClientFactory.outbound(a.outbound, service: "b")
            b3Client.extraHeaders = [("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1")]
            _ = try await b3Client.get("/b3")
            let joined = try await eventually(timeout: .seconds(15), interval: .milliseconds(200)) { () -> ExportedSpan in
                let lines = ((try? String(contentsOf: spansFile, encoding: .utf8)) ?? "").split(separator: "\n")
                let spans = try lines.map { try JSONDecoder().decode(ExportedSpan.self, from: Data($0.utf8)) }
                guard let span = spans.first(where: { $0.service == "a" && $0.attributes["url.path"]?.text == "/b3" }) else {
                    throw TestFailure("no span for /b3 yet")
                }
                return span
            }
            XCTAssertEqual(joined.trace_id, "000000000000000080f198ee56343ba8")
            XCTAssertEqual(joined.parent_span_id, "e457b5a2e4d86bd1")

            // Not sampled: a proxy with ratio 0 starts unsampled traces without a span; the
            // next hops keep that decision (no spans either) and the chain carries one trace
            // id with the unsampled flag. A caller's explicit "not sampled" is kept the same way.
            let quietTracing = ["--trace-endpoint", "http://127.0.0.1:\(port)/v1/traces", "--trace-sampling", "0"]
            let d = try await mesh.proxy("d", app: HostPort(host: "127.0.0.1", port: 9), extra: quietTracing)
            let quiet = try await eventually(timeout: .seconds(5), interval: .milliseconds(50)) { () -> String in
                let text = try await callThroughMesh(d.outbound, service: "b", path: "/quiet").text
                guard text == "hello from b, then hello from c\n" else { throw TestFailure("got \(text)") }
                return text
            }
            XCTAssertEqual(quiet, "hello from b, then hello from c\n")
            func parents(_ path: String) -> [String] {
                apps.flatMap { app in app.requests.filter { $0.path == path }.flatMap { $0.header("traceparent") } }
            }
            let started = parents("/quiet")
            XCTAssertEqual(started.count, 2, "b's and c's apps each got one traceparent: \(started)")
            XCTAssertEqual(Set(started.map { $0.split(separator: "-")[1] }).count, 1, "one trace id along the chain: \(started)")
            XCTAssertTrue(started.allSatisfy { $0.hasSuffix("-00") && TraceParentShape.isValid($0) }, "\(started)")
            var declined = APIClientFactory.outbound(a.outbound, service: "b")
            declined.extraHeaders = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]
            _ = try await declined.get("/declined")
            let kept = parents("/declined")
            XCTAssertEqual(kept.count, 2, "\(kept)")
            XCTAssertTrue(kept.allSatisfy { $0 == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" },
                          "an unsampled caller's context goes on unchanged: \(kept)")
            // The exporters send within a second; nothing of these traces may arrive.
            try await Task.sleep(for: .seconds(3))
            let quietIDs = Set(started.map { String($0.split(separator: "-")[1]) } + ["4bf92f3577b34da6a3ce929d0e0e4736"])
            let exported = ((try? String(contentsOf: spansFile, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONDecoder().decode(ExportedSpan.self, from: Data($0.utf8)) }
            XCTAssertTrue(exported.allSatisfy { !quietIDs.contains($0.trace_id) }, "unsampled traces export no span")
            XCTAssertFalse(exported.contains { $0.attributes["url.path"]?.text == "/quiet" || $0.attributes["url.path"]?.text == "/declined" })
        } catch {
            XCTFail("\(error)\n\(mesh.logs)")
        }
        if receiver.isRunning {
            kill(receiver.processIdentifier, SIGKILL)
            receiver.waitUntilExit()
        }
        for app in apps { await app.stop() }
        await mesh.shutdown()
    }

    private enum TraceParentShape {
        static func isValid(_ value: String) -> Bool {
            value.wholeMatch(of: #/00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]/#) != nil && !value.contains("-00000000000000000000000000000000-")
        }
    }

    /// The Python interpreter itself (not a wrapper such as a pyenv shim, which would not
    /// pass a SIGTERM on), if it has the opentelemetry-proto package.
    private static func pythonWithOTLPProto() -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import sys, opentelemetry.proto.collector.trace.v1.trace_service_pb2; print(sys.executable)"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let path = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        process.waitUntilExit()
        return process.terminationStatus == 0 && !path.isEmpty ? path : nil
    }
}
