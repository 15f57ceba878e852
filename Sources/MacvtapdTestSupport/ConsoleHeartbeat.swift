import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The `GUEST BEAT <n>` lines of a guest started with `GuestConfiguration.heartbeat`, stamped with
/// the wall clock as they appear in its console file (read every half millisecond by a thread of
/// its own, so the stamps do not wait for the cooperative pool). QEMU writes the file as the
/// guest writes its UART, so a beat's stamp is when the guest ran, to within that period.
public final class ConsoleHeartbeat: Sendable {
    private let beats = Mutex<[Int64]>([])
    private let stopping = Atomic<Bool>(false)

    public init(consolePath: String) throws {
        let fd = open(consolePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ChildError("open \(consolePath): \(String(cString: strerror(errno)))") }
        Thread { [self] in follow(fd) }.start()
    }

    deinit { stop() }

    /// Wall-clock stamps of every beat so far, in order.
    public var times: [Int64] { beats.withLock { $0 } }

    /// The thread ends within a period.
    public func stop() { stopping.store(true, ordering: .relaxed) }

    private func follow(_ fd: Int32) {
        defer { close(fd) }
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        let prefix = Array("GUEST BEAT ".utf8)
        while !stopping.load(ordering: .relaxed) {
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                pending.append(contentsOf: buffer[..<count])
            }
            let now = WallClock.now()
            var found = 0
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                if pending[..<newline].starts(with: prefix) { found += 1 }
                pending.removeSubrange(...newline)
            }
            if found > 0 { beats.withLock { $0 += Array(repeating: now, count: found) } }
            usleep(500)
        }
    }

    /// The guest's longest silence that began before `instant` and ended after it: from the last
    /// beat at or before it to the first one after.
    public static func silence(across instant: Int64, before: [Int64], after: [Int64]) -> (from: Int64, to: Int64)? {
        guard let last = before.last(where: { $0 <= instant }), let first = after.first(where: { $0 > instant })
        else { return nil }
        return (last, first)
    }
}
