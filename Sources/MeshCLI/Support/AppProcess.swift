import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The app that `mesh proxy -- CMD ARGS` starts once the proxy is ready: spawned with the
/// default signal dispositions and an empty signal mask (the proxy itself ignores SIGTERM to
/// drain, and ignored signals would otherwise be inherited), awaited without blocking a
/// Swift task, and stopped with SIGTERM (SIGKILL after `grace`) when the proxy is.
struct AppProcess: Sendable {
    let command: [String]
    let environment: [String: String]
    var grace: Duration = .seconds(10)

    /// Runs the command to its end and returns its exit code (128 + N for signal N). When the
    /// calling task is cancelled, the app gets SIGTERM, then SIGKILL after `grace`.
    func run() async throws -> Int32 {
        let pid = try spawn()
        let exit = ExitWatch(pid: pid)
        return await withTaskCancellationHandler {
            await exit.wait()
        } onCancel: {
            kill(pid, SIGTERM)
            let grace = self.grace
            Task {
                try? await Task.sleep(for: grace)
                if !exit.hasExited { kill(pid, SIGKILL) }
            }
        }
    }

    private func spawn() throws -> pid_t {
        guard let program = command.first else { throw AppError("no command given after --") }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid = pid_t()
        let result = posix_spawnp(&pid, program, nil, &attributes, argv, envp)
        guard result == 0 else {
            throw AppError("cannot start '\(program)': \(String(cString: strerror(result))); check the command after --")
        }
        return pid
    }
}

struct AppError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Waits for one child on a thread of its own (waitpid blocks) and hands its exit code over.
private final class ExitWatch: Sendable {
    private let code = Ready<Int32>()

    init(pid: pid_t) {
        let code = self.code
        Thread {
            var status: Int32 = 0
            var result: pid_t
            repeat { result = waitpid(pid, &status, 0) } while result == -1 && errno == EINTR
            // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (they are C macros).
            let signal = status & 0x7F
            code.set(result == -1 ? 1 : signal == 0 ? (status >> 8) & 0xFF : 128 + signal)
        }.start()
    }

    var hasExited: Bool { code.peek() != nil }

    func wait() async -> Int32 {
        // `Ready` fails only through `fail`, which is never called here.
        (try? await code.wait()) ?? 1
    }
}
