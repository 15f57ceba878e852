import CMacvtapd
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One QMP socket: a reader thread that splits lines and hands replies to their commands and events
/// to a stream, writers serialised by a lock, and a table of waiting commands.
///
/// Commands carry no `"id"`: QEMU reads a monitor's commands in order and answers each before it
/// runs the next (no out-of-band execution is negotiated), so the n-th reply answers the n-th
/// command written, and QEMU reads its monitor a byte per main-loop pass (an id was about a tenth
/// of an attach's bytes). Every command written is queued in write order under the write lock, and
/// each reply takes the oldest; a command that timed out or was cancelled stays queued, abandoned,
/// so that its late reply is consumed and dropped instead of answering the next command.
///
/// The reader owns the file descriptor's lifetime: `shutdown()` only wakes it with shutdown(2),
/// and the reader closes the fd when it exits, under the write lock, so no writer can ever send on
/// a reused descriptor number.
///
/// The reader thread (`QMPConnection+Reader.swift`) and pipelines (`QMPConnection+Pipeline.swift`)
/// are extensions in files of their own, so the state they share is internal, not private.
final class QMPConnection: Sendable {
    /// Reserved key for the greeting, which QEMU sends unasked; never queued as written.
    static let greetingID: Int64 = 0
    /// How long an idle reader sleeps before it looks at the clock again. A daemon holds one
    /// connection per VM for weeks: at 5 s, forty idle sessions woke 480 times a minute. A command
    /// registered while the reader sleeps longer than its deadline wakes it through the pipe.
    static let idleWake: Duration = .seconds(60)
    /// Bounds of one read: at least a typical reply, at most what a few reads of a long one take.
    static let smallestRead = 4096
    static let largestRead = 64 * 1024

    let path: String
    let maximumLineLength: Int
    let events: AsyncStream<QMPEvent>
    let eventSink: AsyncStream<QMPEvent>.Continuation
    let readFD: Int32
    /// Self-pipe that wakes the reader when a command with an earlier deadline is registered.
    /// Deadlines live in the reader rather than in a timer task per command: a task per command
    /// doubled the round-trip time of a trivial command.
    let wakeRead: Int32
    let wakeWrite: Int32
    let writeSide: Mutex<Int32>
    let state = Mutex(State())

    struct Pending {
        let command: String
        /// Called exactly once, outside the state lock, with the reply or why there is none.
        let resume: @Sendable (Result<JSONValue, any Error>) -> Void
        let deadline: ContinuousClock.Instant
        let timeout: Duration
    }

    struct State {
        var nextID: Int64 = 1
        /// Waiting commands by key; a key leaves this table when its command is answered, times
        /// out, is cancelled or fails.
        var pending: [Int64: Pending] = [:]
        /// The keys of the commands written and not yet answered, oldest first, abandoned ones too.
        var written = WrittenCommands()
        var earlyGreeting: JSONValue?
        /// Set by whoever shuts the socket down, so the reader reports why the stream ended.
        var shutdownReason: String?
        var failure: String?
        var readerFinished = false
        /// When the reader's poll(2) will next wake by itself; an earlier deadline must wake it.
        var readerWakesAt: ContinuousClock.Instant?
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    init(path: String, maximumLineLength: Int, eventBufferLimit: Int) throws(QMPError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < capacity, !pathBytes.isEmpty else {
            throw .invalidArgument("QMP socket path '\(path)' must be 1...\(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .connectFailed(path: path, errno: errno) }
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let code = errno
            Glibc.close(fd)
            throw .connectFailed(path: path, errno: code)
        }
        // A peer that stops reading must not block a writer (and every caller queued behind it) forever.
        var sendTimeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sendTimeout, socklen_t(MemoryLayout<timeval>.size))

        var wake: [Int32] = [-1, -1]
        guard pipe(&wake) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw .connectFailed(path: path, errno: code)
        }
        for end in wake {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, O_NONBLOCK)
        }
        self.wakeRead = wake[0]
        self.wakeWrite = wake[1]
        self.path = path
        self.maximumLineLength = maximumLineLength
        self.readFD = fd
        self.writeSide = Mutex(fd)
        (events, eventSink) = AsyncStream.makeStream(
            of: QMPEvent.self, bufferingPolicy: .bufferingNewest(eventBufferLimit))
        try startReader()
    }

    // MARK: Commands

    func execute(command: String, arguments: JSONValue?, passing fd: Int32?, timeout: Duration) async throws
        -> JSONValue
    {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        let bytes = Self.encode(command: command, arguments: arguments)
        return try await awaitReply(id: id, command: command, timeout: timeout) { () throws(QMPError) in
            try self.write(bytes, passing: fd, command: command, id: id)
        }
    }

    /// A command as written: compact JSON with no `"id"` (replies are matched by order), a newline.
    static func encode(command: String, arguments: JSONValue?) -> [UInt8] {
        var message: [String: JSONValue] = ["execute": .string(command)]
        if let arguments { message["arguments"] = arguments }
        return JSONWriter.encode(.object(message)) + [0x0A]
    }

    func awaitGreeting(timeout: Duration) async throws -> JSONValue {
        try await awaitReply(id: Self.greetingID, command: "greeting", timeout: timeout) { () throws(QMPError) in }
    }

    /// Registers a waiter for `id`, runs `send`, and arms the timeout. Exactly one of reply,
    /// timeout, cancellation, send failure or connection loss resumes the continuation: each
    /// path first removes the entry from the table under the lock.
    private func awaitReply(
        id: Int64, command: String, timeout: Duration, send: @escaping @Sendable () throws(QMPError) -> Void
    ) async throws -> JSONValue {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<JSONValue, any Error>) in
                let deadline = ContinuousClock.now + timeout
                let registered: Bool = state.withLock { state in
                    if id == Self.greetingID, let greeting = state.earlyGreeting {
                        continuation.resume(returning: greeting)
                        return false
                    }
                    if let failure = state.failure {
                        continuation.resume(throwing: QMPError.connectionClosed(command: command, reason: failure))
                        return false
                    }
                    state.pending[id] = Pending(
                        command: command, resume: { continuation.resume(with: $0) }, deadline: deadline,
                        timeout: timeout)
                    if state.readerWakesAt.map({ deadline < $0 }) ?? true {
                        // Under the lock: the reader closes the pipe under it too, so the fd is never stale.
                        var byte: UInt8 = 1
                        _ = Glibc.write(wakeWrite, &byte, 1)
                    }
                    return true
                }
                guard registered else { return }
                if Task.isCancelled {
                    complete(id: id, with: .failure(CancellationError()))
                    return
                }
                do {
                    try send()
                } catch {
                    complete(id: id, with: .failure(error))
                }
            }
        } onCancel: {
            complete(id: id, with: .failure(CancellationError()))
        }
    }

    func complete(id: Int64, with result: Result<JSONValue, any Error>) {
        guard let pending = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
        pending.resume(result)
    }

    private func write(_ bytes: [UInt8], passing passedFD: Int32?, command: String, id: Int64) throws(QMPError) {
        try writeSide.withLock { fd throws(QMPError) in
            try write(bytes, passing: passedFD, command: command, id: id, on: fd)
        }
    }

    /// Sends one command's bytes on `fd`; the caller holds the write lock. The command is queued
    /// as written before its first byte goes out (its reply can come before `send` returns) and
    /// under the write lock (the queue's order is the socket's). A failed send shuts the socket
    /// down, so a queued command that never reached QEMU is never waited for.
    func write(
        _ bytes: [UInt8], passing passedFD: Int32?, command: String, id: Int64, on fd: Int32
    ) throws(QMPError) {
        guard fd >= 0 else { throw .connectionClosed(command: command, reason: "socket already closed") }
        state.withLock { $0.written.append(id) }
        let failure: Int32? = bytes.withUnsafeBytes { raw in
            var offset = 0
            if let passedFD {
                // The fd rides on the first bytes of the command, as QEMU's getfd expects.
                let sent = cmacvtapd_send_with_fd(fd, raw.baseAddress, raw.count, passedFD)
                guard sent >= 0 else { return errno }
                offset = sent
            }
            while offset < raw.count {
                let sent = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += sent
            }
            return nil
        }
        if let failure {
            // A partly written command would corrupt the stream for every later command.
            state.withLock { state in
                if state.shutdownReason == nil {
                    state.shutdownReason = "sending \(command) failed: \(errnoDescription(failure))"
                }
            }
            _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
            throw .sendFailed(command: command, errno: failure)
        }
    }

    // MARK: Lifecycle

    var failureReason: String? { state.withLock { $0.failure } }

    /// Wakes the reader, which fails every waiting command and ends the event stream.
    func shutdown() {
        state.withLock { state in
            if state.shutdownReason == nil { state.shutdownReason = "closed by the client" }
        }
        writeSide.withLock { fd in
            if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// `shutdown()`, then waits until the reader has closed the descriptor.
    func close() async {
        shutdown()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = state.withLock { state in
                if state.readerFinished { return true }
                state.finishWaiters.append(continuation)
                return false
            }
            if finished { continuation.resume() }
        }
    }
}

func errnoDescription(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
