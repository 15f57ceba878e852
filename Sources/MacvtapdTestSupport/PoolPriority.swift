import Glibc

/// Keeps the cooperative pool's threads ahead of the processes the tests start. A full run starts
/// every test at once: QEMUs, daemons, a TCG guest's boot and hundreds of `ip` commands want both
/// cores for the first seconds, and the pool's two threads, though not blocked, then wait for a CPU
/// (a pool probe saw a thread 18 ms on a CPU and 182 ms waiting for one within a 200 ms late wake),
/// which every in-memory test with a deadline feels. At nice -5 the kernel runs them first; they
/// compute little, so what they take from the children is small.
///
/// Each pool thread raises itself the first time it passes a fixture (`waitUntil`, `offPool`, a
/// namespace, the embedded host); threads that `offPool` starts go back to nice 0 first, so the
/// processes they spawn (QEMU, the daemon) run at the usual priority. `MACVTAPD_POOL_NICE` sets the
/// value (`0` turns this off); without the privilege to raise priority nothing changes. Only in the
/// test runner (`*.xctest`): the benchmarks, which link this module too, keep their own conditions.
enum PoolPriority {
    static let nice: Int32? = {
        guard CommandLine.arguments.first?.hasSuffix(".xctest") == true else { return nil }
        let value = getenv("MACVTAPD_POOL_NICE").flatMap { Int32(String(cString: $0)) } ?? -5
        return value == 0 ? nil : value
    }()

    /// Marks the threads already raised (a thread-specific value, one load per call after the first).
    private static let raised: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Raises the calling thread, once; called on pool threads.
    static func raiseCurrentThread() {
        guard let nice, pthread_getspecific(raised) == nil else { return }
        pthread_setspecific(raised, UnsafeRawPointer(bitPattern: 1))
        // PRIO_PROCESS with 0 is the calling thread on Linux, not the whole process.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice)
    }

    /// Back to nice 0 for a thread started from a raised one (it inherited the raise).
    static func resetCurrentThread() {
        guard nice != nil else { return }
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 0)
    }
}

/// What every fixture entry point does first on the calling (pool) thread.
@inline(__always)
func poolThreadEntersFixture() {
    PoolProbe.startIfEnabled()
    PoolPriority.raiseCurrentThread()
}
