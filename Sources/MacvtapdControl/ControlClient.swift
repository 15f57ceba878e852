import MacvtapdThreads

#if canImport(Glibc)
    import Glibc
#endif

/// The CLI's end of the control socket: one call per connection. The socket calls block, so they
/// run on a thread of their own, never on Swift's cooperative pool.
public enum ControlClient {
    /// Why a call got no reply.
    public enum Failure: Error, CustomStringConvertible, Sendable {
        /// Nothing listens at the path (no socket, or a stale one from a daemon that died).
        case noDaemon
        case permissionDenied(String)
        /// The daemon closed the connection, or did not answer in time, or said nothing sensible.
        case broken(String)

        public var description: String {
            switch self {
            case .noDaemon: return "no daemon is running"
            case .permissionDenied(let why), .broken(let why): return why
            }
        }
    }

    /// Calls `method` on the daemon at `socket` and waits at most `timeout` for the reply.
    /// Throws `Failure` when there is no reply, `ControlError` when the daemon answered with an error.
    public static func call<P: Codable & Sendable, R: Codable & Sendable>(
        socket path: String, _ method: ControlProtocol.Method, _ parameters: P, returning: R.Type,
        timeout: Duration
    ) async throws -> R {
        let message = try ControlWire.encodeCall(method, parameters)
        let reply = try await OffThread.run { () throws(Failure) -> [UInt8] in
            try exchange(path, message, timeout: timeout)
        }
        return try ControlWire.decodeReply(R.self, from: reply)
    }

    /// Connects, sends, reads one NUL-terminated reply. Blocking: call it off the cooperative pool.
    static func exchange(_ path: String, _ message: [UInt8], timeout: Duration) throws(Failure) -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .broken("socket: \(errnoText())") }
        defer { close(fd) }
        if UnixSocket.connect(fd, to: path) != 0 {
            switch errno {
            case ENOENT, ECONNREFUSED, ENOTDIR: throw .noDaemon
            case EACCES, EPERM:
                throw .permissionDenied(
                    "cannot connect to the daemon's control socket \(path): \(errnoText()); run as root or as a "
                        + "member of the group the daemon grants (macvtapd run --control-group)")
            default: throw .broken("cannot connect to the daemon's control socket \(path): \(errnoText())")
            }
        }
        UnixSocket.setNonBlocking(fd)
        let outgoing = message + [0]
        var sent = 0
        sending: while sent < outgoing.count {
            try wait(fd, for: POLLOUT, until: deadline, path: path)
            // MSG_NOSIGNAL: a daemon that refused the call and closed must cost an error, not SIGPIPE.
            let count = outgoing.withUnsafeBytes {
                send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                // The daemon stopped reading, most likely after refusing the call: its reply says why.
                break sending
            }
            sent += count
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            try wait(fd, for: POLLIN, until: deadline, path: path)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .broken("reading from the daemon at \(path): \(errnoText())")
            }
            if count == 0 {
                throw .broken(
                    "the daemon at \(path) closed the connection before replying (it stopped or restarted); "
                        + "run the command again")
            }
            if let end = chunk[..<count].firstIndex(of: 0) {
                return reply + chunk[..<end]
            }
            reply += chunk[..<count]
        }
    }

    private static func wait(_ fd: Int32, for event: Int32, until deadline: ContinuousClock.Instant, path: String)
        throws(Failure)
    {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else {
                throw .broken("the daemon at \(path) did not reply within the time allowed")
            }
            var entry = pollfd(fd: fd, events: Int16(event), revents: 0)
            let ready = poll(&entry, 1, Int32(min(left.milliseconds + 1, 60_000)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR { throw .broken("poll: \(errnoText())") }
        }
    }
}

/// Runs a blocking body on a new thread and awaits its result without holding a pool thread.
public enum OffThread {
    public static func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            let started = NativeThread.detach { continuation.resume(returning: Result(catching: body)) }
            if case .failure = started {
                continuation.resume(returning: Result(catching: body))
            }
        }
        return try result.get()
    }
}
