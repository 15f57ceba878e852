import CMacvtapd
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A tap interface in the current network namespace, for proving fd passing end to end without
/// the netlink code: its char-device fd (`fd`) is what a test hands to QEMU with `getfd`, and an
/// AF_PACKET socket on the interface side sends frames into QEMU and sees frames QEMU writes.
///
/// The tap is not persistent: the interface disappears once this fixture and QEMU have both
/// closed their fds, so a crashed test leaves nothing behind.
public final class ProbeTap: Sendable {
    public let name: String
    public let ifindex: Int32
    /// The tap char-device fd (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR). Do not read it while QEMU owns
    /// a copy: both would compete for the same queue.
    public let fd: Int32
    private let packetSocket: Mutex<Int32>
    private let closed = Mutex(false)

    /// `init` on a thread of its own: TUNSETIFF and bringing the link up take RTNL, which a
    /// namespace being torn down elsewhere can hold for long.
    public static func make(name: String? = nil) async throws -> ProbeTap {
        try await offPool { try ProbeTap(name: name) }
    }

    /// Creates `mvq<random>` (or `name`), brings it up and opens a packet socket on it. Blocks:
    /// async code uses `make`.
    public init(name: String? = nil) throws {
        let name = name ?? "mvq" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        guard name.utf8.count < Int(IFNAMSIZ) else { throw QEMUFixtureError("tap name '\(name)' is too long") }
        let tap = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard tap >= 0 else { throw QEMUFixtureError("open /dev/net/tun for tap \(name) failed: errno \(errno)") }
        var request = ifreq()
        Self.setName(name, in: &request)
        request.ifr_ifru.ifru_flags = Int16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        guard cmacvtapd_ioctl_ifreq(tap, CMACVTAPD_TUNSETIFF, &request) == 0 else {
            let code = errno
            Glibc.close(tap)
            throw QEMUFixtureError("TUNSETIFF for tap \(name) failed: errno \(code)")
        }
        do {
            try Self.setUp(name)
            let index = Int32(if_nametoindex(name))
            guard index > 0 else { throw QEMUFixtureError("tap \(name) has no ifindex") }
            let packet = try Self.packetSocket(ifindex: index, name: name)
            self.name = name
            self.ifindex = index
            self.fd = tap
            self.packetSocket = Mutex(packet)
        } catch {
            Glibc.close(tap)
            throw error
        }
    }

    deinit { close() }

    /// Returns at once: the descriptors are closed on a thread of its own, as closing either
    /// waits in the kernel (an RCU grace period for the packet socket; the tap's detach and, when
    /// QEMU holds no copy, the interface's unregistration).
    public func close() {
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        let packet = packetSocket.withLock { packet in
            defer { packet = -1 }
            return packet
        }
        let tap = fd
        Thread.detachNewThread {
            Glibc.close(packet)
            Glibc.close(tap)
        }
    }

    /// Transmits `frame` on the interface: the kernel queues it to the tap fd, i.e. into QEMU.
    public func send(_ frame: [UInt8]) throws {
        let sent = packetSocket.withLock { packet in
            frame.withUnsafeBytes { Glibc.send(packet, $0.baseAddress, $0.count, 0) }
        }
        guard sent == frame.count else { throw QEMUFixtureError("send on tap \(name) failed: errno \(errno)") }
    }

    /// A frame QEMU wrote into the tap fd (received on the interface), or nil after `timeout`.
    public func receive(timeout: Duration, matching filter: FrameFilter = FrameFilter()) async -> [UInt8]? {
        await pollFrames(timeout: timeout, filter: filter) { buffer in
            packetSocket.withLock { packet in
                var address = sockaddr_ll()
                var length = socklen_t(MemoryLayout<sockaddr_ll>.size)
                let count = buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &address) { pointer in
                        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            recvfrom(packet, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT), $0, &length)
                        }
                    }
                }
                // Our own transmissions loop back to the packet socket; only incoming frames count.
                if count > 0 && address.sll_pkttype == UInt8(PACKET_OUTGOING) { return 0 }
                return count
            }
        }
    }

    private static func setName(_ name: String, in request: inout ifreq) {
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { raw in
            raw.copyBytes(from: Array(name.utf8) + [0])
        }
    }

    private static func setUp(_ name: String) throws {
        let control = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard control >= 0 else { throw QEMUFixtureError("socket for SIOCSIFFLAGS on \(name) failed: errno \(errno)") }
        defer { Glibc.close(control) }
        var request = ifreq()
        setName(name, in: &request)
        guard cmacvtapd_ioctl_ifreq(control, UInt(SIOCGIFFLAGS), &request) == 0 else {
            throw QEMUFixtureError("SIOCGIFFLAGS on \(name) failed: errno \(errno)")
        }
        request.ifr_ifru.ifru_flags |= Int16(IFF_UP)
        guard cmacvtapd_ioctl_ifreq(control, UInt(SIOCSIFFLAGS), &request) == 0 else {
            throw QEMUFixtureError("SIOCSIFFLAGS up on \(name) failed: errno \(errno)")
        }
    }

    /// Made with protocol 0 and bound with ETH_P_ALL: one made with ETH_P_ALL would be unhooked
    /// again by the bind, which waits for an RCU grace period (see `PacketSocket`).
    private static func packetSocket(ifindex: Int32, name: String) throws -> Int32 {
        let protocolAll = UInt16(ETH_P_ALL).bigEndian
        let packet = Glibc.socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard packet >= 0 else { throw QEMUFixtureError("AF_PACKET socket for \(name) failed: errno \(errno)") }
        var address = sockaddr_ll()
        address.sll_family = UInt16(AF_PACKET)
        address.sll_protocol = protocolAll
        address.sll_ifindex = ifindex
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(packet, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
            }
        }
        guard bound == 0 else {
            Glibc.close(packet)
            throw QEMUFixtureError("bind AF_PACKET to \(name) failed: errno \(errno)")
        }
        return packet
    }
}
