import CMacvtapd
import Foundation
import Glibc
import Synchronization

/// A raw AF_PACKET socket bound to one interface of a test namespace: sends whole Ethernet frames
/// into it and receives the frames arriving on it (outgoing ones are ignored).
///
/// Made with protocol 0 and bound with ETH_P_ALL: a socket made with a protocol is hooked into the
/// stack at once, and binding it then unhooks it again, which waits for an RCU grace period
/// (synchronize_net, 16 ms here, more under load). Closing one waits for a grace period as well, so
/// `close()` leaves that to a thread of its own.
public final class PacketSocket: Sendable {
    private let fd: Mutex<Int32>
    public let interface: String

    /// Opens the socket from a thread of its own: entering the namespace never happens on the
    /// cooperative pool.
    public static func open(interface: String, in namespace: NetworkNamespace) async throws -> PacketSocket {
        try await offPool { try PacketSocket(interface: interface, in: namespace) }
    }

    /// Enters `namespace` on the calling thread: for threads of their own (benchmarks); async code
    /// uses `open(interface:in:)`.
    public init(interface: String, in namespace: NetworkNamespace) throws {
        self.interface = interface
        let created: Int32 = try namespace.withEntered {
            let index = if_nametoindex(interface)
            guard index != 0 else { throw PacketSocketError(operation: "find \(interface)", errno: errno) }
            let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                throw PacketSocketError(operation: "open packet socket on \(interface)", errno: errno)
            }
            var ignoreOutgoing: Int32 = 1
            setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &ignoreOutgoing, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_ll()
            address.sll_family = UInt16(AF_PACKET)
            address.sll_protocol = UInt16(ETH_P_ALL).bigEndian
            address.sll_ifindex = Int32(index)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
                }
            }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw PacketSocketError(operation: "bind packet socket to \(interface)", errno: code)
            }
            return fd
        }
        fd = Mutex(created)
    }

    deinit { close() }

    /// Returns at once; the descriptor is closed on a thread of its own (the kernel waits for an
    /// RCU grace period before a packet socket's close returns).
    public func close() {
        let old = fd.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        if old >= 0 { Self.closeOffPool(old) }
    }

    /// Closes a descriptor whose close may wait in the kernel (packet sockets, tap devices) from a
    /// thread of its own.
    public static func closeOffPool(_ fd: Int32) {
        Thread.detachNewThread { _ = Glibc.close(fd) }
    }

    public func send(_ frame: [UInt8]) throws {
        try fd.withLock { fd in
            let sent = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
            guard sent == frame.count else { throw PacketSocketError(operation: "send on \(interface)", errno: errno) }
        }
    }

    /// The first received frame `matching` accepts, or nil after `timeout`; other frames (IPv6
    /// router solicitations and the like) are skipped. Waits on a thread of its own.
    public func receive(timeout: Duration, matching: @escaping @Sendable ([UInt8]) -> Bool = { _ in true })
        async throws -> [UInt8]?
    {
        let descriptor = fd.withLock { $0 }
        return try await Self.receive(from: descriptor, timeout: timeout, matching: matching)
    }

    /// `receive` waiting on the calling thread: for threads of their own (benchmarks).
    @available(*, noasync, message: "blocks a cooperative pool thread: use the async receive")
    public func receive(timeout: Duration, matching: ([UInt8]) -> Bool = { _ in true }) throws -> [UInt8]? {
        let descriptor = fd.withLock { $0 }
        return try PacketSocket.receive(from: descriptor, timeout: timeout, matching: matching)
    }

    /// Polls any descriptor (a packet socket, a tap fd) for a datagram `matching` accepts, on a
    /// thread of its own.
    public static func receive(
        from fd: Int32, timeout: Duration, matching: @escaping @Sendable ([UInt8]) -> Bool = { _ in true }
    ) async throws -> [UInt8]? {
        try await offPool { try receiveBlocking(from: fd, timeout: timeout, matching: matching) }
    }

    /// `receive(from:)` waiting on the calling thread.
    @available(*, noasync, message: "blocks a cooperative pool thread: use the async receive")
    public static func receive(
        from fd: Int32, timeout: Duration, matching: ([UInt8]) -> Bool = { _ in true }
    ) throws -> [UInt8]? {
        try receiveBlocking(from: fd, timeout: timeout, matching: matching)
    }

    static func receiveBlocking(
        from fd: Int32, timeout: Duration, matching: ([UInt8]) -> Bool
    ) throws -> [UInt8]? {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return nil }
            let (seconds, attoseconds) = remaining.components
            var polled = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&polled, 1, Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000) + 1)
            if ready < 0 {
                if errno == EINTR { continue }
                throw PacketSocketError(operation: "poll fd \(fd)", errno: errno)
            }
            if ready == 0 { continue }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                if errno == ENOTSOCK {
                    // A tap character device: a read returns exactly one frame.
                    let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if got < 0 {
                        if errno == EAGAIN || errno == EINTR { continue }
                        throw PacketSocketError(operation: "read fd \(fd)", errno: errno)
                    }
                    let frame = Array(buffer[0..<got])
                    if matching(frame) { return frame }
                    continue
                }
                throw PacketSocketError(operation: "receive on fd \(fd)", errno: errno)
            }
            let frame = Array(buffer[0..<count])
            if matching(frame) { return frame }
        }
    }
}

public struct PacketSocketError: Error, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public var description: String { "\(operation): \(String(cString: strerror(errno))) (errno \(errno))" }
}
