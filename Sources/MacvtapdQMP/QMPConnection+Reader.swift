import CMacvtapd
import MacvtapdThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The reader thread: it splits the socket's bytes into lines, hands replies to the commands
/// written oldest first and events to the stream, expires commands past their deadline, and closes
/// the socket when it ends.
extension QMPConnection {
    func startReader() throws(QMPError) {
        if case .failure(let error) = NativeThread.detach({ [self] in readLoop() }) {
            writeSide.withLock { fd in
                Glibc.close(fd)
                fd = -1
            }
            state.withLock { state in
                state.failure = "could not start the reader thread"
                Glibc.close(wakeRead)
                Glibc.close(wakeWrite)
            }
            eventSink.finish()
            throw .connectFailed(path: path, errno: error.errno)
        }
    }

    private func readLoop() {
        var lines = QMPLineSplitter(maximumLineLength: maximumLineLength)
        var greeted = false
        var reason: String
        while true {
            guard waitUntilReadable() else { continue }
            // A buffer for what is waiting, freed after the read: a daemon keeps one reader per VM
            // for good, and a 16 KiB buffer each, idle between replies, was 640 KiB of heap at 40
            // VMs. A long reply (a 25-NIC `info qtree` is 78 KB) takes a few more reads.
            var waiting: Int32 = 0
            let size = cmacvtapd_ioctl_intptr(readFD, UInt(FIONREAD), &waiting) == 0 ? Int(waiting) : 0
            let capacity = min(max(size, Self.smallestRead), Self.largestRead)
            var count = 0
            let chunk = [UInt8](unsafeUninitializedCapacity: capacity) { buffer, initialized in
                count = Glibc.read(readFD, buffer.baseAddress, capacity)
                initialized = max(0, count)
            }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                // A killed QEMU with unread commands in its queue resets instead of closing.
                if errno == ECONNRESET {
                    reason = state.withLock { $0.shutdownReason } ?? "peer closed the connection"
                    break
                }
                reason = "read failed: \(errnoDescription(errno))"
                break
            }
            if count == 0 {
                reason = state.withLock { $0.shutdownReason } ?? "peer closed the connection"
                break
            }
            if let fatal = lines.append(chunk, { handle(line: $0, greeted: &greeted) }) {
                reason = fatal
                break
            }
        }
        finish(reason: reason)
    }

    /// Sleeps in poll(2) until the socket is readable (true) or a deadline passed or the wake pipe
    /// fired (false), failing the commands whose deadline has passed.
    private func waitUntilReadable() -> Bool {
        let clock = ContinuousClock()
        let next = state.withLock { state in
            // Waking now and then even when idle means a command with a timeout longer than the
            // idle interval (the usual case) never has to write to the wake pipe.
            let next = min(state.pending.values.map(\.deadline).min() ?? .now + Self.idleWake, .now + Self.idleWake)
            state.readerWakesAt = next
            return next
        }
        let (seconds, attoseconds) = (next - clock.now).components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        let pollTimeout = Int32(clamping: max(0, milliseconds))
        var descriptors = [
            pollfd(fd: readFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&descriptors, 2, pollTimeout)
        if descriptors[1].revents != 0 {
            var drain = [UInt8](repeating: 0, count: 64)
            while Glibc.read(wakeRead, &drain, drain.count) > 0 {}
        }
        expireCommands(now: clock.now)
        return ready > 0 && descriptors[0].revents != 0
    }

    private func expireCommands(now: ContinuousClock.Instant) {
        let expired = state.withLock { state in
            let ids = state.pending.filter { $0.value.deadline <= now }.map(\.key)
            return ids.compactMap { state.pending.removeValue(forKey: $0) }
        }
        for entry in expired {
            entry.resume(.failure(QMPError.timeout(command: entry.command, after: entry.timeout)))
        }
    }

    /// Returns a reason to drop the connection, or nil to keep reading.
    private func handle(line: ArraySlice<UInt8>, greeted: inout Bool) -> String? {
        switch QMPInbound.decode(line, greeted: greeted) {
        case .fatal(let reason):
            return reason
        case .greeting(let message):
            greeted = true
            let waiting = state.withLock { state in
                if state.pending[Self.greetingID] == nil { state.earlyGreeting = message }
                return state.pending[Self.greetingID] != nil
            }
            if waiting { complete(id: Self.greetingID, with: .success(message)) }
        case .event(let event):
            eventSink.yield(event)
        case .reply(let value):
            // A reply with no command written is not an answer to anything: dropped.
            guard let id = state.withLock({ $0.written.removeOldest() }) else { break }
            complete(id: id, with: .success(value))
        case .failure(let errorClass, let description):
            guard
                let (id, command) = state.withLock({ state in
                    state.written.removeOldest().map { ($0, state.pending[$0]?.command ?? "?") }
                })
            else { break }
            complete(
                id: id,
                with: .failure(QMPError.commandFailed(command: command, class: errorClass, description: description)))
        case .ignored:
            break
        }
        return nil
    }

    private func finish(reason: String) {
        let (pending, waiters) = state.withLock { state in
            state.failure = reason
            state.readerFinished = true
            Glibc.close(wakeRead)
            Glibc.close(wakeWrite)
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
            entry.resume(.failure(QMPError.connectionClosed(command: entry.command, reason: reason)))
        }
        eventSink.finish()
        for waiter in waiters { waiter.resume() }
    }
}
