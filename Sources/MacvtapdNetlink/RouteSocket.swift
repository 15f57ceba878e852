import CMacvtapd
import Glibc
import MacvtapdCore
import Synchronization

/// The request side of rtnetlink: one NETLINK_ROUTE socket, one request in flight at a time,
/// each matched to its reply by sequence number. Calls block the calling thread for one kernel
/// round trip (tens of microseconds); the socket never waits on anything but the kernel.
public final class RouteSocket: Sendable {
    private struct State {
        var fd: Int32
        var sequence: UInt32
        var buffer: [UInt8]
    }

    private let state: Mutex<State>

    /// A socket in the calling thread's network namespace.
    public convenience init() throws {
        try self.init(adopting: NetlinkSocket.open(operation: "open rtnetlink socket"))
    }

    /// A socket in the network namespace at `path` (e.g. `/run/netns/NAME`); every request made
    /// through it acts on that namespace, whichever thread makes it.
    public convenience init(networkNamespace path: String) throws {
        let fd = try withNetworkNamespace(path) {
            try NetlinkSocket.open(operation: "open rtnetlink socket in \(path)")
        }
        try self.init(adopting: fd)
    }

    private init(adopting fd: Int32) throws {
        do {
            // A kernel that never answers is a bug, but a daemon must not hang on one forever.
            try NetlinkSocket.setReceiveTimeout(fd, seconds: 5, operation: "configure rtnetlink socket")
        } catch {
            Glibc.close(fd)
            throw error
        }
        state = Mutex(State(fd: fd, sequence: 0, buffer: NetlinkSocket.receiveBuffer()))
    }

    deinit { close() }

    /// Closes the socket; later requests fail with EBADF. Safe to call more than once.
    public func close() {
        state.withLock { state in
            if state.fd >= 0 { Glibc.close(state.fd) }
            state.fd = -1
        }
    }

    // MARK: Exchanges

    enum Reply {
        /// NLM_F_ACK: an NLMSG_ERROR with errno 0 ends it.
        case ack
        /// A get: one message of the reply type (or an NLMSG_ERROR).
        case single
        /// NLM_F_DUMP: messages until NLMSG_DONE.
        case dump
    }

    struct DumpInterrupted: Error {}

    /// Sends one request and feeds every message answering it to `receive`.
    func exchange(
        operation: String, interface: String?, reply: Reply, request: (UInt32) -> [UInt8],
        receive: (NetlinkMessage) throws -> Void = { _ in }
    ) throws {
        try state.withLock { state in
            func failure(_ code: Int32, _ message: String? = nil) -> NetlinkError {
                NetlinkError(operation: operation, interface: interface, errno: code, message: message)
            }
            guard state.fd >= 0 else { throw failure(EBADF) }
            state.sequence &+= 1
            let sequence = state.sequence
            let bytes = request(sequence)
            let sent = bytes.withUnsafeBytes { send(state.fd, $0.baseAddress, $0.count, 0) }
            guard sent == bytes.count else { throw failure(sent < 0 ? errno : EMSGSIZE) }

            var interrupted = false
            while true {
                let fd = state.fd
                let count = state.buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
                if count < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    throw failure(code == EAGAIN || code == EWOULDBLOCK ? ETIMEDOUT : code)
                }
                guard count <= state.buffer.count else { throw failure(EMSGSIZE, "reply of \(count) bytes truncated") }
                let messages: [NetlinkMessage]
                do {
                    messages = try NetlinkMessage.split(state.buffer[0..<count])
                } catch {
                    throw failure(EPROTO, "\(error)")
                }
                for message in messages {
                    // Replies to an earlier request that timed out are stale: skip them.
                    guard message.header.sequence == sequence else { continue }
                    switch message.header.type {
                    case MessageType.error:
                        let status: NetlinkStatus
                        do { status = try NetlinkStatus.decodeError(message) } catch {
                            throw failure(EPROTO, "\(error)")
                        }
                        guard status.errno == 0 else { throw failure(status.errno, status.message) }
                        return
                    case MessageType.done:
                        let status: NetlinkStatus
                        do { status = try NetlinkStatus.decodeDone(message) } catch {
                            throw failure(EPROTO, "\(error)")
                        }
                        guard status.errno == 0 else { throw failure(status.errno, status.message) }
                        if interrupted { throw DumpInterrupted() }
                        return
                    case MessageType.noop:
                        continue
                    default:
                        if message.header.flags & MessageFlags.dumpInterrupted != 0 { interrupted = true }
                        try receive(message)
                        if reply == .single { return }
                    }
                }
            }
        }
    }
}
