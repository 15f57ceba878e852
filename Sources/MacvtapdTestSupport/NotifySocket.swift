#if canImport(Glibc)
    import Glibc
#endif

/// A datagram socket standing in for systemd's notification socket ($NOTIFY_SOCKET). A test can
/// leave it unread, fill its queue up front (a slow or wedged PID 1), and read it later.
public final class NotifySocket: Sendable {
    public let fd: Int32
    /// The value for NOTIFY_SOCKET: a file path, or `@name` for an abstract socket.
    public let path: String

    /// A socket at `path`, or an abstract one with a random name when `path` is nil.
    public init(path: String? = nil) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.path = path ?? "@macvtapd-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var address = Self.address(self.path)
        let bound = withUnsafePointer(to: &address.address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, address.length) }
        }
        guard bound == 0 else {
            let why = String(cString: strerror(errno))
            Glibc.close(fd)
            throw ChildError("cannot bind \(self.path): \(why)")
        }
    }

    static func address(_ path: String) -> (address: sockaddr_un, length: socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // '@' names an abstract socket: its first byte is NUL on the wire.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return (address, socklen_t(MemoryLayout<sa_family_t>.size + bytes.count))
    }

    /// Sends datagrams to the socket from another socket until its queue is full
    /// (net.unix.max_dgram_qlen): the next sender that does not wait gets EAGAIN. Returns how many fit.
    @discardableResult
    public func fill() throws -> Int {
        let sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { Glibc.close(sender) }
        var address = Self.address(path)
        let filler = Array("X_FILLER=1".utf8)
        for count in 0..<100_000 {
            let sent = withUnsafePointer(to: &address.address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(sender, filler, filler.count, Int32(MSG_DONTWAIT), $0, address.length)
                }
            }
            if sent < 0 {
                guard errno == EAGAIN else { throw ChildError("cannot fill \(path): errno \(errno)") }
                return count
            }
        }
        throw ChildError("\(path) never filled")
    }

    /// The next datagram, or nil when none arrives within `timeout`. One already queued is taken at
    /// once; otherwise the wait happens on a thread of its own, never on the cooperative pool.
    public func receive(timeout: Duration = .seconds(2)) async -> String? {
        if let queued = receiveNow() { return queued }
        guard timeout > .zero else { return nil }
        return await offPool { self.receiveBlocking(timeout: timeout) }
    }

    /// Every datagram queued now, oldest first.
    public func drain() -> [String] {
        var messages: [String] = []
        while let message = receiveNow() { messages.append(message) }
        return messages
    }

    /// A queued datagram, without waiting.
    func receiveNow() -> String? { receiveBlocking(timeout: .zero) }

    func receiveBlocking(timeout: Duration) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(
            timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&poller, 1, milliseconds) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return count >= 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }

    public func close() {
        Glibc.close(fd)
        if !path.hasPrefix("@") { unlink(path) }
    }
}
