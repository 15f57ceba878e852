#if canImport(Glibc)
    import Glibc
#endif

/// A POSIX thread of its own, for a loop that blocks in poll or read for as long as its socket
/// lives (a QMP session's reader, the link and udev monitors, the control socket, the config
/// watcher): such a loop must never hold one of Swift's cooperative threads, of which a two-core
/// machine has two.
public enum NativeThread {
    /// Starts `body` on a new joinable thread: join or detach what is returned. On failure `body`
    /// never runs and the error carries pthread_create's errno.
    public static func start(_ body: @escaping @Sendable () -> Void) -> Result<pthread_t, NativeThreadError> {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
                return nil
            }, box.toOpaque())
        guard result == 0 else {
            box.release()
            return .failure(NativeThreadError(errno: result))
        }
        return .success(thread)
    }

    /// `start`, detached: the thread cleans up after itself when `body` returns.
    public static func detach(_ body: @escaping @Sendable () -> Void) -> Result<Void, NativeThreadError> {
        start(body).map { _ = pthread_detach($0) }
    }

    private final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }
}

public struct NativeThreadError: Error, CustomStringConvertible {
    /// What pthread_create returned (EAGAIN: out of threads or memory for a stack).
    public let errno: Int32
    public var description: String { "cannot start a thread: \(String(cString: strerror(errno)))" }
}
