import Foundation
import MeshTelemetry
import XCTest

/// The latency histograms are recorded per event loop without a lock and added up at the
/// scrape: what `/metrics` shows must be every sample, in the right buckets, whatever the
/// number of loops recording at once.
final class ShardedHistogramTests: XCTestCase {
    private let labels = EdgeLabels(direction: .outbound, sourceService: "web", sourceIdentity: "spiffe://mesh.local/ns/default/sa/web",
                                    destinationService: "api", destinationIdentity: "spiffe://mesh.local/ns/default/sa/api", tls: true)

    /// The value of the one line that starts with `prefix` (name and labels).
    private func sample(_ text: String, _ prefix: String) -> Double? {
        let lines = text.split(separator: "\n").filter { $0.hasPrefix(prefix + " ") }
        guard lines.count == 1, let value = lines[0].split(separator: " ").last else { return nil }
        return Double(value)
    }

    func testSamplesOfEveryLoopAreCountedOnceInTheirBuckets() throws {
        let metrics = ProxyMetrics()
        // Four loops, each with its shards of the same edge (as each loop's LoopState makes).
        let loops = (0..<4).map { _ in metrics.edge(labels) }
        let perLoop = 20_000
        DispatchQueue.concurrentPerform(iterations: loops.count) { loop in
            let edge = loops[loop]
            for index in 0..<perLoop {
                // 0.0001 is a bound: a sample equal to it is in its bucket (`le`).
                edge.latency.record(index % 2 == 0 ? 0.0001 : 0.003)
                edge.hops[3].record(20)
            }
        }
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        let series = #"mesh_response_latency_seconds_bucket{direction="outbound",source_service="web",destination_service="api",tls="true","#
        let total = Double(loops.count * perLoop)
        XCTAssertEqual(sample(text, series + #"le="0.0001"}"#), total / 2, text)
        XCTAssertEqual(sample(text, series + #"le="0.0025"}"#), total / 2, "0.003 is above 0.0025\n\(text)")
        XCTAssertEqual(sample(text, series + #"le="0.005"}"#), total, text)
        XCTAssertEqual(sample(text, series + #"le="+Inf"}"#), total, text)
        let count = #"mesh_response_latency_seconds_count{direction="outbound",source_service="web",destination_service="api",tls="true"}"#
        XCTAssertEqual(sample(text, count), total, text)
        let sum = try XCTUnwrap(sample(text, #"mesh_response_latency_seconds_sum{direction="outbound",source_service="web",destination_service="api",tls="true"}"#))
        XCTAssertEqual(sum, total / 2 * 0.0001 + total / 2 * 0.003, accuracy: 1e-6)

        // Above the last bound (10 s): only in +Inf.
        let hop = #"mesh_hop_latency_seconds_bucket{source_service="web",destination_service="api",hop="app","#
        XCTAssertEqual(sample(text, hop + #"le="10.0"}"#), 0, text)
        XCTAssertEqual(sample(text, hop + #"le="+Inf"}"#), total, text)
        XCTAssertEqual(sample(text, hop.replacingOccurrences(of: "app", with: "network") + #"le="+Inf"}"#), 0, "a hop nobody recorded")

        // One HELP and TYPE per name; an inbound edge has no hop series.
        _ = metrics.edge(EdgeLabels(direction: .inbound, sourceService: "web", sourceIdentity: "x", destinationService: "api",
                                    destinationIdentity: "y", tls: true))
        let again = String(decoding: metrics.exposition(), as: UTF8.self)
        XCTAssertEqual(again.components(separatedBy: "# TYPE mesh_response_latency_seconds histogram\n").count, 2, again)
        XCTAssertEqual(again.components(separatedBy: "# TYPE mesh_hop_latency_seconds histogram\n").count, 2, again)
        XCTAssertTrue(again.contains(#"mesh_response_latency_seconds_count{direction="inbound",source_service="web",destination_service="api",tls="true"} 0"#),
                      again)
        XCTAssertFalse(again.contains(#"direction="inbound",source_service="web",destination_service="api",hop="#), again)
    }
}
