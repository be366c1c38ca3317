import Foundation
import MeshCore
@testable import MeshControl
import XCTest

/// The per-service history behind the dashboard's charts.
final class TrafficHistoryTests: XCTestCase {
    /// A clock the test moves by hand.
    final class Clock: @unchecked Sendable {
        private let lock = NSLock()
        private var now = Date(timeIntervalSince1970: 1_800_000_000)
        var date: Date { lock.withLock { now } }
        func advance(_ seconds: Double) { lock.withLock { now += seconds } }
    }

    private func report(_ instance: String, requests: UInt64, failures: UInt64 = 0, latencyMs: Double = 5) -> TrafficReport {
        var counters = EdgeCounters(direction: "inbound", source: "web", destination: "api", tls: true)
        for index in 0..<requests {
            counters.add(status: index < failures ? 503 : 200, latencyMs: latencyMs, denied: false, hopsMs: nil)
        }
        return TrafficReport(instanceID: instance, at: Date(), edges: [counters])
    }

    /// A proxy reporting every 2 s at a steady 10 requests/s, steps every 5 s: every point
    /// reads 10/s, although steps hold two or three reports.
    func testStepsReadTheSteadyRateWhateverTheReportPhase() async {
        let clock = Clock()
        let store = TrafficStore(clock: { clock.date })
        var total: UInt64 = 0
        await store.add(report("api-1", requests: total))
        await store.recordHistory(services: ["api"])
        for second in 1...60 {
            clock.advance(1)
            if second % 2 == 0 {
                total += 20
                await store.add(report("api-1", requests: total))
            }
            if second % 5 == 0 { await store.recordHistory(services: ["api", "web"]) }
        }
        let points = await store.series(service: "api", seconds: 900)
        XCTAssertEqual(points.count, 12)
        for point in points {
            XCTAssertEqual(point.requestsPerSecond, 10, accuracy: 0.001, "\(point)")
            XCTAssertEqual(point.successRate, 1)
            XCTAssertEqual(point.seconds, 5)
        }
        XCTAssertEqual(points.reduce(0) { $0 + $1.requests }, total, "every request is in exactly one step")
        let idle = await store.series(service: "web", seconds: 900)
        XCTAssertEqual(idle.count, 12, "a registered service without traffic gets points too")
        XCTAssertTrue(idle.allSatisfy { $0.requests == 0 && $0.successRate == nil })
        let recent = await store.series(service: "api", seconds: 20)
        XCTAssertEqual(recent.count, 5, "only the steps that ended within the window")
    }

    /// Two instances add up; failures and a proxy restart (counters back to zero, new
    /// instance id) are counted right; an instance's first report is its baseline.
    func testInstancesAddUpAndARestartCountsFromZero() async throws {
        let clock = Clock()
        let store = TrafficStore(clock: { clock.date })
        await store.add(report("api-1", requests: 1000))
        await store.recordHistory(services: ["api"])
        clock.advance(2)
        await store.add(report("api-1", requests: 1020, failures: 10, latencyMs: 120))
        await store.add(report("api-2", requests: 500))
        clock.advance(2)
        await store.add(report("api-2", requests: 540))
        clock.advance(1)
        await store.recordHistory(services: ["api"])
        var points = await store.series(service: "api", seconds: 900)
        var point = try XCTUnwrap(points.last)
        // api-1: 20 over 2 s (its first report before the step was the cursor);
        // api-2: 40 over 2 s, its first report being its baseline.
        XCTAssertEqual(point.requests, 60)
        XCTAssertEqual(point.requestsPerSecond, 30, accuracy: 0.001)
        XCTAssertEqual(point.failures, 10)
        XCTAssertEqual(try XCTUnwrap(point.successRate), 1 - 10.0 / 60, accuracy: 1e-9)
        XCTAssertGreaterThan(try XCTUnwrap(point.p99Ms), 100, "the slow requests of api-1 show in p99")

        // api-2's proxy restarts under the same id: its counters start again from zero.
        clock.advance(2)
        await store.add(report("api-2", requests: 7))
        clock.advance(3)
        await store.recordHistory(services: ["api"])
        points = await store.series(service: "api", seconds: 900)
        point = try XCTUnwrap(points.last)
        XCTAssertEqual(point.requests, 7, "a restarted proxy counts from zero, not as a negative or a wrap")
    }
}
