import CMacvtapd
import MacvtapdCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A UDP socket pair that puts a test on a QEMU hub:
/// `-netdev socket,id=probe,udp=127.0.0.1:<receivePort>,localaddr=127.0.0.1:<qemuPort>` plus a
/// hubport. Every frame on the hub arrives here as a datagram; every datagram sent to QEMU's port
/// enters the hub as a frame.
public final class Probe: Sendable {
    /// Where QEMU sends the hub's frames (bound by this probe).
    public let receivePort: UInt16
    /// Where QEMU listens for frames to put on the hub.
    public let qemuPort: UInt16
    let socket: Mutex<Int32>

    public init() throws {
        let fd = try Self.udpSocket(port: 0)
        receivePort = Self.port(of: fd)
        // Reserve-and-release: QEMU binds this port itself; the window for a collision is tiny.
        let reservation = try Self.udpSocket(port: 0)
        qemuPort = Self.port(of: reservation)
        Glibc.close(reservation)
        socket = Mutex(fd)
    }

    deinit { close() }

    public func close() {
        socket.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    public func qemuArguments(hubID: Int, id: String = "probe") -> [String] {
        [
            "-netdev", "socket,id=\(id),udp=127.0.0.1:\(receivePort),localaddr=127.0.0.1:\(qemuPort)",
            "-netdev", "hubport,id=\(id).port,hubid=\(hubID),netdev=\(id)",
        ]
    }

    /// Puts `frame` (a whole Ethernet frame) on the hub.
    public func send(_ frame: [UInt8]) throws {
        var address = Self.loopback(port: qemuPort)
        let sent = socket.withLock { fd in
            frame.withUnsafeBytes { raw in
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
        }
        guard sent == frame.count else {
            throw QEMUFixtureError("probe send to 127.0.0.1:\(qemuPort) failed: errno \(errno)")
        }
    }

    /// The first frame from the hub that matches, or nil after `timeout`. Non-matching frames
    /// (guest chatter, IPv6 router solicitations) are dropped.
    public func receive(timeout: Duration, matching filter: FrameFilter = FrameFilter()) async -> [UInt8]? {
        await pollFrames(timeout: timeout, filter: filter) { buffer in
            socket.withLock { fd in
                buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
        }
    }

    static func udpSocket(port: UInt16) throws -> Int32 {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw QEMUFixtureError("probe socket failed: errno \(errno)") }
        var address = loopback(port: port)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            Glibc.close(fd)
            throw QEMUFixtureError("probe bind 127.0.0.1:\(port) failed: errno \(errno)")
        }
        return fd
    }

    static func port(of fd: Int32) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }
}

/// Which frames a probe wants: an EtherType and/or a byte sequence somewhere in the payload.
public struct FrameFilter: Sendable {
    public var etherType: UInt16?
    public var marker: [UInt8]?

    public init(etherType: UInt16? = nil, marker: [UInt8]? = nil) {
        self.etherType = etherType
        self.marker = marker
    }

    public func matches(_ frame: [UInt8]) -> Bool {
        guard frame.count >= 14 else { return false }
        if let etherType, EthernetFrame.etherType(of: frame) != etherType { return false }
        if let marker, !marker.isEmpty {
            let payload = frame[14...]
            guard payload.count >= marker.count else { return false }
            let found = payload.indices.dropLast(marker.count - 1).contains { start in
                payload[start..<start + marker.count].elementsEqual(marker)
            }
            if !found { return false }
        }
        return true
    }
}

/// Builds test frames. The default EtherType is IEEE 802 local experimental 1, which nothing on a
/// test host speaks, so a filter on it sees only the test's own frames.
public enum EthernetFrame {
    public static let experimentalEtherType: UInt16 = 0x88B5

    public static func make(
        destination: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], source: [UInt8] = [0x02, 0, 0, 0, 0, 0x01],
        etherType: UInt16 = experimentalEtherType, payload: [UInt8]
    ) -> [UInt8] {
        var frame = destination + source + [UInt8(etherType >> 8), UInt8(etherType & 0xFF)] + payload
        if frame.count < 60 { frame += [UInt8](repeating: 0, count: 60 - frame.count) }
        return frame
    }

    public static func etherType(of frame: [UInt8]) -> UInt16? {
        guard frame.count >= 14 else { return nil }
        return UInt16(frame[12]) << 8 | UInt16(frame[13])
    }

    /// A marker unique enough to tell this test's frames from any other test's.
    public static func uniqueMarker() -> [UInt8] {
        Array("mvtd".utf8) + (0..<8).map { _ in UInt8.random(in: 0...255) }
    }
}

/// Polls a non-blocking receive until a matching frame arrives or the time is up. Sleeping
/// between polls keeps a waiting test from occupying one of the few cooperative threads.
func pollFrames(
    timeout: Duration, filter: FrameFilter, receive: (inout [UInt8]) -> Int
) async -> [UInt8]? {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = receive(&buffer)
        if count > 0 {
            let frame = Array(buffer[0..<count])
            if filter.matches(frame) { return frame }
            continue
        }
        if clock.now >= deadline { return nil }
        try? await Task.sleep(for: .milliseconds(2))
    }
}

extension Probe {
    /// Sends frames addressed to `destination` through `socket` (the far side of a host interface,
    /// a switch port) until one reaches this probe's hub, or `timeout` passes.
    public func receivesFrame(
        to destination: MACAddress, sentThrough socket: PacketSocket, within timeout: Duration = .seconds(3)
    ) async throws -> Bool {
        let marker = EthernetFrame.uniqueMarker()
        let frame = EthernetFrame.make(destination: destination.bytes, payload: marker)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            try socket.send(frame)
            if await receive(timeout: .milliseconds(200), matching: FrameFilter(marker: marker)) != nil { return true }
        }
        return false
    }
}
