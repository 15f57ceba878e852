import CMacvtapd
import Glibc
import MacvtapdThreads
import Synchronization

/// RTNLGRP_LINK notifications as an `AsyncStream`. A dedicated thread reads the socket so no
/// Swift concurrency thread is ever blocked; `close()` wakes it through an eventfd, waits for it to
/// exit and leaves no descriptor behind.
public final class LinkMonitor: Sendable {
    /// One consumer. Ends when the monitor is closed or deinitialised.
    public let events: AsyncStream<LinkEvent>

    private let reader: LinkMonitorReader
    private let thread: Mutex<ReaderThread>

    private enum ReaderThread {
        case notStarted
        case running(pthread_t)
        case stopped
    }

    /// Events buffered for a slow consumer before the overflow turns into `.resyncNeeded`.
    public static let defaultEventBufferLimit = 4096

    /// Monitors the calling thread's network namespace. `receiveBufferSize` sets SO_RCVBUF (the
    /// kernel doubles it); small values make overflow, and so `.resyncNeeded`, more likely.
    public convenience init(receiveBufferSize: Int? = nil, eventBufferLimit: Int = defaultEventBufferLimit) throws {
        let fd = try Self.openSubscribedSocket(receiveBufferSize: receiveBufferSize, operation: "open link monitor")
        try self.init(adopting: fd, eventBufferLimit: eventBufferLimit)
        try startReading()
    }

    /// Monitors the network namespace at `path` (e.g. `/run/netns/NAME`).
    public convenience init(
        networkNamespace path: String, receiveBufferSize: Int? = nil, eventBufferLimit: Int = defaultEventBufferLimit
    ) throws {
        try self.init(
            networkNamespace: path, receiveBufferSize: receiveBufferSize, eventBufferLimit: eventBufferLimit,
            startReading: true)
    }

    /// With `startReading` false the socket is subscribed but nobody reads it until
    /// `startReading()`: how tests make the kernel overflow it deterministically.
    package convenience init(
        networkNamespace path: String, receiveBufferSize: Int?, eventBufferLimit: Int, startReading: Bool
    ) throws {
        let fd = try withNetworkNamespace(path) {
            try Self.openSubscribedSocket(
                receiveBufferSize: receiveBufferSize, operation: "open link monitor in \(path)")
        }
        try self.init(adopting: fd, eventBufferLimit: eventBufferLimit)
        if startReading { try self.startReading() }
    }

    private init(adopting socketFD: Int32, eventBufferLimit: Int) throws {
        let wakeFD = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        guard wakeFD >= 0 else {
            let code = errno
            Glibc.close(socketFD)
            throw NetlinkError(operation: "open link monitor wakeup eventfd", interface: nil, errno: code)
        }
        let (stream, continuation) = AsyncStream.makeStream(
            of: LinkEvent.self, bufferingPolicy: .bufferingOldest(eventBufferLimit))
        let reader = LinkMonitorReader(socketFD: socketFD, wakeFD: wakeFD, continuation: continuation)
        continuation.onTermination = { _ in reader.requestStop() }
        self.events = stream
        self.reader = reader
        self.thread = Mutex(.notStarted)
    }

    package func startReading() throws {
        try thread.withLock { thread in
            guard case .notStarted = thread else { return }
            let reader = self.reader
            switch NativeThread.start({ reader.run() }) {
            case .success(let created):
                thread = .running(created)
            case .failure(let error):
                thread = .stopped
                reader.finish()
                throw NetlinkError(operation: "start link monitor thread", interface: nil, errno: error.errno)
            }
        }
    }

    deinit { close() }

    /// Ends the event stream, stops the reader thread and closes both descriptors before
    /// returning. Safe to call more than once.
    public func close() {
        reader.requestStop()
        let previous = thread.withLock { thread in
            defer { thread = .stopped }
            return thread
        }
        switch previous {
        case .running(let running): pthread_join(running, nil)
        case .notStarted: reader.finish()
        case .stopped: break
        }
    }

    private static func openSubscribedSocket(receiveBufferSize: Int?, operation: String) throws -> Int32 {
        let fd = try NetlinkSocket.open(operation: operation)
        do {
            try NetlinkSocket.setOption(
                fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, Int32(RTNLGRP_LINK.rawValue), operation: operation)
            if let receiveBufferSize {
                try NetlinkSocket.setOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(receiveBufferSize), operation: operation)
            }
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }
}

/// The reader thread's side: owns both descriptors until the thread exits.
final class LinkMonitorReader: Sendable {
    private struct Descriptors {
        var socket: Int32
        var wake: Int32
    }

    private let descriptors: Mutex<Descriptors>
    private let socketFD: Int32
    private let wakeFD: Int32
    private let continuation: AsyncStream<LinkEvent>.Continuation

    init(socketFD: Int32, wakeFD: Int32, continuation: AsyncStream<LinkEvent>.Continuation) {
        self.socketFD = socketFD
        self.wakeFD = wakeFD
        self.descriptors = Mutex(Descriptors(socket: socketFD, wake: wakeFD))
        self.continuation = continuation
    }

    /// Wakes the thread; a no-op once it has exited (its descriptors are closed under the same lock,
    /// so this never writes to a reused descriptor number).
    func requestStop() {
        descriptors.withLock { descriptors in
            guard descriptors.wake >= 0 else { return }
            var one: UInt64 = 1
            _ = write(descriptors.wake, &one, MemoryLayout<UInt64>.size)
        }
    }

    func closeDescriptors() {
        descriptors.withLock { descriptors in
            if descriptors.socket >= 0 { Glibc.close(descriptors.socket) }
            if descriptors.wake >= 0 { Glibc.close(descriptors.wake) }
            descriptors.socket = -1
            descriptors.wake = -1
        }
    }

    /// Closes both descriptors, then ends the stream: a consumer that sees the end can rely on them
    /// being gone.
    func finish() {
        closeDescriptors()
        continuation.finish()
    }

    func run() {
        defer { finish() }
        var emitter = Emitter(continuation: continuation)
        var buffer = NetlinkSocket.receiveBuffer()
        var polled = [
            pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
        ]
        while !emitter.isTerminated {
            // While a resync notice is owed to a full stream, look again soon rather than never.
            let ready = poll(&polled, 2, emitter.owesResync ? 20 : -1)
            if ready < 0 {
                if errno == EINTR { continue }
                emitter.emit(.resyncNeeded)
                return
            }
            if polled[1].revents != 0 { return }
            emitter.retryOwedResync()
            if polled[0].revents != 0, !drain(into: &emitter, buffer: &buffer) { return }
        }
    }

    /// Reads until the socket is empty; false when it failed for good (the stream then ends, after a
    /// resync notice, rather than spinning on a broken socket).
    private func drain(into emitter: inout Emitter, buffer: inout [UInt8]) -> Bool {
        while !emitter.isTerminated {
            let fd = socketFD
            let count = buffer.withUnsafeMutableBytes {
                recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
            }
            if count < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: return true
                // The kernel dropped notifications for us: never swallow that.
                case ENOBUFS: emitter.emit(.resyncNeeded)
                default:
                    emitter.emit(.resyncNeeded)
                    return false
                }
                continue
            }
            guard count <= buffer.count, let messages = try? NetlinkMessage.split(buffer[0..<count]) else {
                emitter.emit(.resyncNeeded)
                continue
            }
            for message in messages {
                if let event = LinkEvent(notification: message) { emitter.emit(event) }
            }
        }
        return true
    }

    /// Turns a full stream buffer into one `.resyncNeeded` instead of silently dropped events.
    private struct Emitter {
        let continuation: AsyncStream<LinkEvent>.Continuation
        var owesResync = false
        var isTerminated = false

        mutating func emit(_ event: LinkEvent) {
            retryOwedResync()
            // Anything after an undelivered resync notice is covered by the resync itself.
            guard !owesResync, !isTerminated else { return }
            record(continuation.yield(event))
        }

        mutating func retryOwedResync() {
            guard owesResync, !isTerminated else { return }
            owesResync = false
            record(continuation.yield(.resyncNeeded))
        }

        private mutating func record(_ result: AsyncStream<LinkEvent>.Continuation.YieldResult) {
            switch result {
            case .enqueued: break
            case .dropped: owesResync = true
            case .terminated: isTerminated = true
            @unknown default: owesResync = true
            }
        }
    }
}
