import Glibc

/// A UDP socket that QEMU's `-netdev socket,udp=` mirrors a hub into: every frame on the hub
/// arrives as one datagram, and a datagram sent back to QEMU's address enters the hub as a frame.
final class HubProbe {
    private let fd: Int32
    let port: UInt16
    /// QEMU's end, learnt from the first datagram (QEMU binds an ephemeral port of its own).
    private var qemu: sockaddr_in?

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw GuestTestFailure("probe socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            let code = errno
            close(fd)
            throw GuestTestFailure("probe bind 127.0.0.1:0: \(String(cString: strerror(code)))")
        }
        self.fd = fd
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }

    /// The netdevs that put this probe on hub `hub`.
    func qemuArguments(hub: Int, id: String = "probe") -> [String] {
        [
            "-netdev", "socket,id=\(id),udp=127.0.0.1:\(port),localaddr=127.0.0.1:0",
            "-netdev", "hubport,id=\(id).port,hubid=\(hub),netdev=\(id)",
        ]
    }

    /// The first frame from the hub that matches, skipping the others.
    func receive(timeout: Duration, matching predicate: ([UInt8]) -> Bool) async throws -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            while let frame = receiveNow() {
                if predicate(frame) { return frame }
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw GuestTestFailure("probe on port \(port): no matching frame within \(timeout)")
    }

    /// Injects a frame into the hub; needs a frame from QEMU first, to know where QEMU listens.
    func send(_ frame: [UInt8]) throws {
        guard var qemu else { throw GuestTestFailure("probe on port \(port): QEMU's address is not known yet") }
        let sent = withUnsafePointer(to: &qemu) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, frame, frame.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard sent == frame.count else { throw GuestTestFailure("probe send: \(String(cString: strerror(errno)))") }
    }

    /// Every frame queued now, without waiting.
    func drain() -> [[UInt8]] {
        var frames: [[UInt8]] = []
        while let frame = receiveNow() { frames.append(frame) }
        return frames
    }

    private func receiveNow() -> [UInt8]? {
        var frame = [UInt8](repeating: 0, count: 65536)
        var from = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = frame.withUnsafeMutableBytes { buffer in
            withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &length)
                }
            }
        }
        guard count > 0 else { return nil }
        qemu = from
        return Array(frame[..<count])
    }
}
