import Glibc

/// posix_spawn attributes that start a child with every signal unblocked and at its default action.
/// Without them a child inherits the spawning thread's signal mask, and the cooperative pool's
/// threads block nearly every signal: a QEMU spawned from one ignores SIGTERM (its clean shutdown,
/// with a SHUTDOWN event on the monitor) and only a SIGKILL seconds later ends it.
public final class CleanSignalSpawnAttributes {
    public var pointer: UnsafeMutablePointer<posix_spawnattr_t>

    public init() {
        pointer = .allocate(capacity: 1)
        posix_spawnattr_init(pointer)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(pointer, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(pointer, &all)
        posix_spawnattr_setflags(pointer, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    }

    deinit {
        posix_spawnattr_destroy(pointer)
        pointer.deallocate()
    }
}
