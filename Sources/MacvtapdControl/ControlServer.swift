import CMacvtapd
import MacvtapdThreads
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Serves the control socket on a thread of its own, like the config watcher and the udev monitor:
/// accept, read and write block nowhere (non-blocking sockets under one poll), and the thread never
/// runs on Swift's cooperative pool, so neither a slow client nor a busy one takes a thread from the
/// controller. The thread only frames messages (varlink's NUL-terminated JSON) and enforces the
/// limits; each whole call goes to `handler` in a task, whose reply the thread writes back.
///
/// Limits (`ControlProtocol.Limits`): a call larger than `maxRequestBytes` is refused before it is
/// decoded; a call not complete within `requestTimeout` of the connection (or of the previous reply)
/// is refused and the connection closed; a reply not read within `replyTimeout` is dropped with the
/// connection; connections beyond `maxClients` are told `Busy`.
public final class ControlServer: Sendable {
    /// A call (without its NUL) and who sent it → the reply (without its NUL), or nil for none
    /// (a varlink `oneway` call).
    public typealias Handler = @Sendable (_ message: [UInt8], _ peer: Peer) async -> [UInt8]?

    private let loop: ServerLoop
    private let thread = Mutex<pthread_t?>(nil)

    public init(endpoint: ControlEndpoint, limits: ControlProtocol.Limits = .init(), handler: @escaping Handler)
        throws(ControlSetupError)
    {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ControlSetupError("pipe: \(errnoText())") }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            UnixSocket.setNonBlocking(fd)
        }
        loop = ServerLoop(endpoint: endpoint, limits: limits, handler: handler, wake: (fds[0], fds[1]))
        let loop = self.loop
        switch NativeThread.start({ loop.run() }) {
        case .success(let thread):
            self.thread.withLock { $0 = thread }
        case .failure(let error):
            loop.closePipe()
            throw ControlSetupError("cannot start the control socket thread: \(errnoText(error.errno))")
        }
    }

    /// Stops serving: open connections are closed (a client waiting for a reply sees the end of
    /// the stream) and replies still being made are dropped. The endpoint stays the caller's.
    public func close() {
        guard
            let thread = thread.withLock({ value -> pthread_t? in
                defer { value = nil }
                return value
            })
        else { return }
        loop.stop()
        pthread_join(thread, nil)
        loop.closePipe()
    }

    deinit { close() }
}

/// The server thread's state. Everything but `shared` is touched by the thread alone.
private final class ServerLoop: @unchecked Sendable {
    struct Client {
        enum State {
            case reading(deadline: ContinuousClock.Instant)
            /// The handler is making the reply.
            case waiting
            case writing(deadline: ContinuousClock.Instant, thenClose: Bool)
        }

        let fd: Int32
        let peer: Peer
        var state: State
        var input: [UInt8] = []
        /// How many leading bytes of `input` are known to hold no NUL: each byte is searched once,
        /// so a call that arrives in many reads costs its length, not its length squared.
        var scanned = 0
        var output: [UInt8] = []
        var written = 0
    }

    /// What other threads hand the loop: finished replies, and the stop request.
    struct Shared {
        var replies: [(client: Int, bytes: [UInt8]?)] = []
        var stopping = false
        /// The wake pipe is closed: late replies are dropped instead of written to a reused fd.
        var closed = false
    }

    let endpoint: ControlEndpoint
    let limits: ControlProtocol.Limits
    let handler: ControlServer.Handler
    let wake: (read: Int32, write: Int32)
    let shared = Mutex(Shared())
    private var clients: [Int: Client] = [:]
    private var nextID = 0

    init(
        endpoint: ControlEndpoint, limits: ControlProtocol.Limits, handler: @escaping ControlServer.Handler,
        wake: (Int32, Int32)
    ) {
        self.endpoint = endpoint
        self.limits = limits
        self.handler = handler
        self.wake = wake
    }

    // MARK: Other threads

    func complete(_ client: Int, _ bytes: [UInt8]?) {
        shared.withLock { shared in
            guard !shared.closed else { return }
            shared.replies.append((client, bytes))
            var byte: UInt8 = 1
            _ = write(wake.write, &byte, 1)
        }
    }

    func stop() {
        shared.withLock { shared in
            shared.stopping = true
            var byte: UInt8 = 1
            _ = write(wake.write, &byte, 1)
        }
    }

    func closePipe() {
        shared.withLock { shared in
            guard !shared.closed else { return }
            shared.closed = true
            close(wake.read)
            close(wake.write)
        }
    }

    // MARK: The thread

    func run() {
        defer {
            for client in clients.values { close(client.fd) }
            clients = [:]
        }
        while true {
            let ids = Array(clients.keys)
            var fds = [
                pollfd(fd: endpoint.listener, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0),
            ]
            for id in ids {
                let client = clients[id]!
                let events: Int32
                switch client.state {
                case .reading: events = POLLIN
                case .waiting: events = 0
                case .writing: events = POLLOUT
                }
                fds.append(pollfd(fd: client.fd, events: Int16(events), revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), timeoutMilliseconds())
            if ready < 0 && errno != EINTR { return }
            if fds[1].revents != 0 {
                drainWake()
                if shared.withLock({ $0.stopping }) { return }
                takeReplies()
            }
            if fds[0].revents & Int16(POLLIN) != 0 { acceptAll() }
            for (index, id) in ids.enumerated() where clients[id] != nil {
                let revents = Int32(fds[index + 2].revents)
                guard revents != 0 else { continue }
                serve(id, revents: revents)
            }
            expireDeadlines()
        }
    }

    private func timeoutMilliseconds() -> Int32 {
        let now = ContinuousClock.now
        var nearest: ContinuousClock.Instant?
        for client in clients.values {
            switch client.state {
            case .reading(let deadline), .writing(let deadline, _):
                nearest = min(nearest ?? deadline, deadline)
            case .waiting: break
            }
        }
        guard let nearest else { return -1 }
        let left = nearest - now
        return left <= .zero ? 0 : Int32(min(left.milliseconds + 1, 60_000))
    }

    private func drainWake() {
        var buffer = [UInt8](repeating: 0, count: 256)
        while buffer.withUnsafeMutableBytes({ read(wake.read, $0.baseAddress, $0.count) }) > 0 {}
    }

    private func takeReplies() {
        let replies = shared.withLock { shared in
            defer { shared.replies = [] }
            return shared.replies
        }
        for (id, bytes) in replies where clients[id] != nil {
            guard let bytes else {
                clients[id]!.state = .reading(deadline: .now + limits.requestTimeout)
                processInput(id)
                continue
            }
            send(id, bytes, thenClose: false)
        }
    }

    private func acceptAll() {
        while true {
            let fd = cmacvtapd_accept_nonblocking(endpoint.listener)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            guard let peer = UnixSocket.peer(fd) else {
                close(fd)
                continue
            }
            let id = nextID
            nextID += 1
            clients[id] = Client(fd: fd, peer: peer, state: .reading(deadline: .now + limits.requestTimeout))
            if !endpoint.admits(peer) {
                refuse(
                    id, ControlError("io.macvtapd.PermissionDenied", .init(reason: "\(peer) may not use this socket")))
            } else if clients.count > limits.maxClients {
                refuse(id, ControlError("io.macvtapd.Busy", .init(limit: limits.maxClients)))
            }
        }
    }

    private func serve(_ id: Int, revents: Int32) {
        guard let client = clients[id] else { return }
        switch client.state {
        case .reading:
            if revents & POLLIN != 0 {
                readAvailable(id)
            } else if revents & (POLLHUP | POLLERR) != 0 {
                drop(id)
            }
        case .writing:
            if revents & (POLLERR | POLLHUP) != 0 && revents & POLLOUT == 0 {
                drop(id)
            } else {
                flush(id)
            }
        case .waiting:
            // The client went away while its reply is being made: the reply will be dropped.
            if revents & (POLLHUP | POLLERR) != 0 { drop(id) }
        }
    }

    private func readAvailable(_ id: Int) {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while let fd = clients[id]?.fd {
            let got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if got < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { drop(id) }
                break
            }
            if got == 0 {
                drop(id)
                return
            }
            clients[id]!.input += chunk[..<got]
            if chunk[..<got].contains(0) || clients[id]!.input.count > limits.maxRequestBytes { break }
        }
        processInput(id)
    }

    /// Hands a whole call to the handler, or refuses one that grew past the limit.
    private func processInput(_ id: Int) {
        guard var client = clients[id], case .reading = client.state else { return }
        let end = client.input[client.scanned...].firstIndex(of: 0)
        client.scanned = end ?? client.input.count
        clients[id]!.scanned = client.scanned
        if let end {
            guard end <= limits.maxRequestBytes else {
                refuse(id, ControlError("io.macvtapd.RequestTooLarge", .init(limit: limits.maxRequestBytes)))
                return
            }
            let message = Array(client.input[..<end])
            client.input.removeSubrange(...end)
            client.scanned = 0
            client.state = .waiting
            clients[id] = client
            let handler = self.handler
            let peer = client.peer
            Task.detached { [self] in
                let reply = await handler(message, peer)
                self.complete(id, reply)
            }
        } else if client.input.count > limits.maxRequestBytes {
            refuse(id, ControlError("io.macvtapd.RequestTooLarge", .init(limit: limits.maxRequestBytes)))
        }
    }

    private func send(_ id: Int, _ bytes: [UInt8], thenClose: Bool) {
        guard clients[id] != nil else { return }
        clients[id]!.output = bytes + [0]
        clients[id]!.written = 0
        clients[id]!.state = .writing(deadline: .now + limits.replyTimeout, thenClose: thenClose)
        flush(id)
    }

    /// An error reply, then the end of the connection: what the client sent cannot be trusted
    /// to be followed by anything sensible.
    private func refuse(_ id: Int, _ error: ControlError) {
        send(id, ControlWire.encode(error), thenClose: true)
    }

    private func flush(_ id: Int) {
        guard var client = clients[id], case .writing(_, let thenClose) = client.state else { return }
        while client.written < client.output.count {
            let count = client.output.withUnsafeBytes {
                write(client.fd, $0.baseAddress! + client.written, $0.count - client.written)
            }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN {
                    clients[id] = client
                    return
                }
                drop(id)
                return
            }
            client.written += count
        }
        if thenClose {
            drop(id)
            return
        }
        client.output = []
        client.written = 0
        client.state = .reading(deadline: .now + limits.requestTimeout)
        clients[id] = client
        // A client may send its next call before reading the reply to the last.
        processInput(id)
    }

    private func expireDeadlines() {
        let now = ContinuousClock.now
        for (id, client) in clients {
            switch client.state {
            case .reading(let deadline) where deadline <= now:
                let seconds = Double(limits.requestTimeout.milliseconds) / 1000
                let what = client.input.isEmpty ? "no call arrived" : "the call did not arrive whole"
                refuse(
                    id,
                    ControlError(
                        "io.macvtapd.RequestTimeout",
                        .init(reason: "\(what) within \(seconds) s; closing the connection")))
            case .writing(let deadline, _) where deadline <= now:
                drop(id)
            default:
                break
            }
        }
    }

    private func drop(_ id: Int) {
        guard let client = clients.removeValue(forKey: id) else { return }
        close(client.fd)
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
