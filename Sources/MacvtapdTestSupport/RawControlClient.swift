import CMacvtapd
import MacvtapdControl

#if canImport(Glibc)
    import Glibc
#endif

/// A control-socket client that misbehaves on purpose, for tests: it connects and says nothing,
/// sends garbage or too much, and reads whatever comes back. Every wait is a poll with a timeout
/// on a thread of its own, never on the cooperative pool.
public final class RawControlClient: Sendable {
    let fd: Int32

    public init(socket path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ChildError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8) + [0])
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let why = String(cString: strerror(errno))
            Glibc.close(fd)
            throw ChildError("connect \(path): \(why)")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Sends what the peer takes within `timeout`; returns the bytes sent (fewer when the peer
    /// closed the connection, as the daemon does after refusing a call).
    @discardableResult
    public func send(_ bytes: [UInt8], timeout: Duration = .seconds(10)) async -> Int {
        let fd = self.fd
        return await OffThread.run { () -> Int in
            let deadline = ContinuousClock.now + timeout
            var sent = 0
            while sent < bytes.count, ContinuousClock.now < deadline {
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                guard poll(&entry, 1, 100) > 0 else { continue }
                let count = bytes.withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
                }
                if count < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    return sent
                }
                sent += count
            }
            return sent
        }
    }

    /// One message (up to its NUL), as text; nil when the connection ended first or nothing came
    /// within `timeout`.
    public func receive(timeout: Duration = .seconds(10)) async -> String? {
        let fd = self.fd
        return await OffThread.run { () -> String? in
            let deadline = ContinuousClock.now + timeout
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while ContinuousClock.now < deadline {
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 100) > 0 else { continue }
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    return nil
                }
                if count == 0 { return nil }
                bytes += chunk[..<count]
                if let end = bytes.firstIndex(of: 0) { return String(decoding: bytes[..<end], as: UTF8.self) }
            }
            return nil
        }
    }

    /// Whether the peer closed the connection within `timeout` (end of stream, nothing more to read).
    public func isClosed(within timeout: Duration = .seconds(10)) async -> Bool {
        let fd = self.fd
        return await OffThread.run { () -> Bool in
            let deadline = ContinuousClock.now + timeout
            var chunk = [UInt8](repeating: 0, count: 4096)
            while ContinuousClock.now < deadline {
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 100) > 0 else { continue }
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR) { return true }
            }
            return false
        }
    }

    public func close() { Glibc.close(fd) }
}

/// A unix socket that accepts connections into its backlog and never says anything: the monitor
/// of a hung QEMU (no QMP greeting ever comes).
public final class SilentListener: Sendable {
    let fd: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8) + [0])
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else {
            let why = String(cString: strerror(errno))
            if fd >= 0 { Glibc.close(fd) }
            throw ChildError("silent listener at \(path): \(why)")
        }
    }

    public func close() {
        Glibc.close(fd)
        unlink(path)
    }
}
