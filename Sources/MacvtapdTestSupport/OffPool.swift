import Foundation

/// Runs blocking work (posix_spawn and waitpid, a long CPU-bound parse) on a thread of its own and
/// awaits its result. Swift's cooperative pool has one thread per core, two on the machines here:
/// a test that blocks one of them stalls every other test running in parallel, and timing tests
/// (a controller that must retry within 100 ms) then fail for reasons of their own.
public func offPool<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
    poolThreadEntersFixture()
    return try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            PoolPriority.resetCurrentThread()
            continuation.resume(with: Result { try body() })
        }
    }
}

/// `offPool` for work that cannot fail.
public func offPool<Value: Sendable>(_ body: @escaping @Sendable () -> Value) async -> Value {
    poolThreadEntersFixture()
    return await withCheckedContinuation { continuation in
        Thread.detachNewThread {
            PoolPriority.resetCurrentThread()
            continuation.resume(returning: body())
        }
    }
}
