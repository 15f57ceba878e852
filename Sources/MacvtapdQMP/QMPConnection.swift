import CMacvtapd
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One QMP socket: a reader thread that splits lines and dispatches replies by id and events to a
/// stream, writers serialised by a lock, and a table of waiting commands.
///
/// The reader owns the file descriptor's lifetime: `shutdown()` only wakes it with shutdown(2),
/// and the reader closes the fd when it exits, under the write lock, so no writer can ever send on
/// a reused descriptor number.
final class QMPConnection: Sendable {
    /// Reserved id for the greeting, which QEMU sends unasked.
    static let greetingID: Int64 = 0

    let path: String
    let maximumLineLength: Int
    let events: AsyncStream<QMPEvent>
    private let eventSink: AsyncStream<QMPEvent>.Continuation
    private let readFD: Int32
    private let writeSide: Mutex<Int32>
    private let state = Mutex(State())

    private struct Pending {
        let command: String
        let continuation: CheckedContinuation<JSONValue, any Error>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var nextID: Int64 = 1
        var pending: [Int64: Pending] = [:]
        var earlyGreeting: JSONValue?
        /// Set by whoever shuts the socket down, so the reader reports why the stream ended.
        var shutdownReason: String?
        var failure: String?
        var readerFinished = false
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
        var message: [String: JSONValue] = ["execute": .string(command), "id": .int(id)]
        if let arguments { message["arguments"] = arguments }
        let bytes = JSONWriter.encode(.object(message)) + [0x0A]
        return try await awaitReply(id: id, command: command, timeout: timeout) { () throws(QMPError) in
            try self.write(bytes, passing: fd, command: command)
        }
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
                let early: Result<JSONValue, QMPError>? = state.withLock { state in
                    if id == Self.greetingID, let greeting = state.earlyGreeting { return .success(greeting) }
                    if let failure = state.failure {
                        return .failure(.connectionClosed(command: command, reason: failure))
                    }
                    state.pending[id] = Pending(command: command, continuation: continuation, timer: nil)
                    return nil
                }
                if let early {
                    continuation.resume(with: early)
                    return
                }
                if Task.isCancelled {
                    complete(id: id, with: .failure(CancellationError()))
                    return
                }
                do {
                    try send()
                } catch {
                    complete(id: id, with: .failure(error))
                    return
                }
                let timer = Task { [self] in
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled {
                        complete(id: id, with: .failure(QMPError.timeout(command: command, after: timeout)))
                    }
                }
                let stillWaiting = state.withLock { state in
                    guard state.pending[id] != nil else { return false }
                    state.pending[id]?.timer = timer
                    return true
                }
                if !stillWaiting { timer.cancel() }
            }
        } onCancel: {
            complete(id: id, with: .failure(CancellationError()))
        }
    }

    private func complete(id: Int64, with result: Result<JSONValue, any Error>) {
        guard let pending = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
        pending.timer?.cancel()
        pending.continuation.resume(with: result)
    }

    private func write(_ bytes: [UInt8], passing passedFD: Int32?, command: String) throws(QMPError) {
        try writeSide.withLock { fd throws(QMPError) in
            guard fd >= 0 else { throw .connectionClosed(command: command, reason: "socket already closed") }
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

    // MARK: Reader

    private func startReader() throws(QMPError) {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                let connection = Unmanaged<QMPConnection>.fromOpaque(raw!).takeRetainedValue()
                connection.readLoop()
                return nil
            }, context)
        guard result == 0 else {
            Unmanaged<QMPConnection>.fromOpaque(context).release()
            writeSide.withLock { fd in
                Glibc.close(fd)
                fd = -1
            }
            eventSink.finish()
            throw .connectFailed(path: path, errno: result)
        }
        pthread_detach(thread)
    }

    private func readLoop() {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var greeted = false
        var scanFrom = 0
        var reason: String
        reading: while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(readFD, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                reason = "read failed: \(errnoDescription(errno))"
                break
            }
            if count == 0 {
                reason = state.withLock { $0.shutdownReason } ?? "peer closed the connection"
                break
            }
            buffer.append(contentsOf: chunk[0..<count])
            var lineStart = 0
            while let newline = buffer[scanFrom...].firstIndex(of: 0x0A) {
                var lineEnd = newline
                if lineEnd > lineStart, buffer[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                if lineEnd > lineStart, let fatal = handle(line: buffer[lineStart..<lineEnd], greeted: &greeted) {
                    reason = fatal
                    break reading
                }
                lineStart = newline + 1
                scanFrom = lineStart
            }
            if lineStart > 0 {
                buffer.removeFirst(lineStart)
            }
            scanFrom = buffer.count
            if buffer.count > maximumLineLength {
                reason = "peer sent a line longer than \(maximumLineLength) bytes"
                break
            }
        }
        finish(reason: reason)
    }

    /// Returns a reason to drop the connection, or nil to keep reading.
    private func handle(line: ArraySlice<UInt8>, greeted: inout Bool) -> String? {
        let message: JSONValue
        do {
            message = try JSONReader.parse(line)
        } catch {
            return "peer sent \(error): \(String(decoding: line.prefix(120), as: UTF8.self))"
        }
        guard message.objectValue != nil else { return "peer sent a non-object message: \(message)" }
        if !greeted {
            guard message["QMP"] != nil else { return "first message is not a QMP greeting: \(message)" }
            greeted = true
            let waiting = state.withLock { state in
                if state.pending[Self.greetingID] == nil { state.earlyGreeting = message }
                return state.pending[Self.greetingID] != nil
            }
            if waiting { complete(id: Self.greetingID, with: .success(message)) }
            return nil
        }
        if let event = QMPEvent(message: message) {
            eventSink.yield(event)
            return nil
        }
        // Replies without a known id are late answers to commands that timed out or were cancelled.
        guard let id = message["id"]?.intValue, id != Self.greetingID else { return nil }
        if let value = message["return"] {
            complete(id: id, with: .success(value))
        } else if let error = message["error"] {
            let command = state.withLock { $0.pending[id]?.command } ?? "?"
            complete(
                id: id,
                with: .failure(
                    QMPError.commandFailed(
                        command: command, class: error["class"]?.stringValue ?? "GenericError",
                        description: error["desc"]?.stringValue ?? "\(error)")))
        }
        return nil
    }

    private func finish(reason: String) {
        let (pending, waiters) = state.withLock { state in
            state.failure = reason
            state.readerFinished = true
            defer {
                state.pending = [:]
                state.finishWaiters = []
            }
            return (state.pending, state.finishWaiters)
        }
        writeSide.withLock { fd in
            Glibc.close(fd)
            fd = -1
        }
        for entry in pending.values {
            entry.timer?.cancel()
            entry.continuation.resume(throwing: QMPError.connectionClosed(command: entry.command, reason: reason))
        }
        eventSink.finish()
        for waiter in waiters { waiter.resume() }
    }
}

func errnoDescription(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
