import Logging
import MeshCore
import MeshTesting
import MeshTransport
import NIOCore
import NIOPosix
import XCTest

/// The admin and proxy APIs stop when their task is cancelled (Ctrl-C, SIGTERM) while
/// callers are still connecting: the process must not die of it, every connection must be
/// closed, and the server must return at once.
final class APIServerShutdownTests: XCTestCase {
    func testCancellingWhileCallersConnectClosesEveryConnectionAndDoesNotCrash() async throws {
        for round in 0..<5 {
            let server = try await APIServer.bind(HostPort(host: "127.0.0.1", port: 0), group: MultiThreadedEventLoopGroup.singleton,
                                                  logger: Logger(label: "test")) { _ in .text("ok") }
            let address = server.localAddress
            let serving = Task { await server.run() }
            // One served request first, so that the server is surely running.
            let first = try await plainGet(address, "/")
            XCTAssertEqual(first.text, "ok")
            // Callers connecting as the server is cancelled: some accepted and not yet served.
            let callers = (0..<200).map { _ in
                Task { () -> Channel? in
                    try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .connect(host: address.host, port: address.port).get()
                }
            }
            try await Task.sleep(for: .milliseconds(round * 2))
            let cancelled = ContinuousClock.now
            serving.cancel()
            await serving.value
            XCTAssertLessThan(ContinuousClock.now - cancelled, .seconds(5), "the server returns once cancelled")
            var connected = 0
            for caller in callers {
                guard let channel = await caller.value else { continue }
                connected += 1
                // Closed by the server: the close future completes without the test closing it.
                let closed = try await withThrowingTaskGroup(of: Bool.self) { group in
                    group.addTask { try await channel.closeFuture.get(); return true }
                    group.addTask { try await Task.sleep(for: .seconds(5)); return false }
                    let first = try await group.next() ?? false
                    group.cancelAll()
                    return first
                }
                if !closed { channel.close(promise: nil) }
                XCTAssertTrue(closed, "round \(round): a connection the server accepted stays open after it stopped")
            }
            print("round \(round): \(connected) callers connected around the cancellation")
        }
    }
}
