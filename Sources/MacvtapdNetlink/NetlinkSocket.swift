import CMacvtapd
import Glibc

/// Socket-level helpers shared by the request socket and the event monitor.
enum NetlinkSocket {
    /// A bound NETLINK_ROUTE socket with extended ACKs (the kernel's error text) and capped ACKs
    /// (errors do not echo our request back).
    static func open(operation: String) throws -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_ROUTE)
        guard fd >= 0 else { throw NetlinkError(operation: operation, interface: nil, errno: errno) }
        do {
            try setOption(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1, operation: operation)
            try setOption(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1, operation: operation)
            var address = sockaddr_nl()
            address.nl_family = sa_family_t(AF_NETLINK)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
            guard bound == 0 else { throw NetlinkError(operation: operation, interface: nil, errno: errno) }
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, operation: String) throws {
        var value = value
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw NetlinkError(operation: operation, interface: nil, errno: errno)
        }
    }

    static func setReceiveTimeout(_ fd: Int32, seconds: Int, operation: String) throws {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        guard setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            throw NetlinkError(operation: operation, interface: nil, errno: errno)
        }
    }

    /// Kernel rtnetlink datagrams stay well below this (a dump chunk is at most 32 KiB).
    static let receiveBufferSize = 64 * 1024

    /// A receive buffer that is not zero-filled: at this size malloc maps it on its own (the daemon
    /// sets M_MMAP_THRESHOLD to 64 KiB), so only the pages a datagram was written to become
    /// resident. An event is a few hundred bytes; zero-filled, each socket's buffer kept 64 KiB.
    static func receiveBuffer() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: receiveBufferSize) { _, initialized in initialized = receiveBufferSize }
    }
}
