import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The frames a guest sends, as they reach a `Probe` on its NIC's hub (before any backend, so
/// independent of the macvtap): stamped with the wall clock by a thread of its own. QEMU's own
/// announce RARPs carry the guest's MAC too, but the guest did not send them: they are left out.
public final class GuestFrames: Sendable {
    private let stamps = Mutex<[Int64]>([])
    private let stopping = Atomic<Bool>(false)

    public init(_ probe: Probe, from mac: MACAddress) {
        Thread { [self] in follow(probe, mac: mac.bytes) }.start()
    }

    deinit { stop() }

    /// Wall-clock stamps of every guest-sent frame so far, in order.
    public var times: [Int64] { stamps.withLock { $0 } }

    /// Returns once the thread no longer uses the probe's socket (within a poll period), so the
    /// caller may close the probe next without the thread reading a reused descriptor.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .relaxed) { usleep(100) }
    }

    private let finished = Atomic<Bool>(false)

    private func follow(_ probe: Probe, mac: [UInt8]) {
        defer { finished.store(true, ordering: .relaxed) }
        var buffer = [UInt8](repeating: 0, count: 2048)
        while !stopping.load(ordering: .relaxed) {
            let fd = probe.socket.withLock { $0 }
            guard fd >= 0 else { return }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 1) > 0 else { continue }
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard count >= 14 else { break }
                let now = WallClock.now()
                let isRARP = buffer[12] == 0x80 && buffer[13] == 0x35
                if !isRARP && buffer[6..<12].elementsEqual(mac) { stamps.withLock { $0.append(now) } }
            }
        }
    }
}
