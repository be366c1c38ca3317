import NIOConcurrencyHelpers

/// A value that becomes available once (an address after a listener is up, an exit code).
final class Ready<Value: Sendable>: Sendable {
    private let state = NIOLockedValueBox<(value: Value?, waiters: [CheckedContinuation<Value, Error>])>((nil, []))

    func fail(_ error: Error) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Value, Error>] in
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume(throwing: error) }
    }

    func set(_ value: Value) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Value, Error>] in
            state.value = value
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume(returning: value) }
    }

    func peek() -> Value? { state.withLockedValue { $0.value } }

    func wait() async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            let value = state.withLockedValue { state -> Value? in
                if let value = state.value { return value }
                state.waiters.append(continuation)
                return nil
            }
            if let value { continuation.resume(returning: value) }
        }
    }
}
