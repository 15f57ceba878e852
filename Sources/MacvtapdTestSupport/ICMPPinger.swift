import Foundation
import Glibc
import Synchronization

/// ICMP echo from inside a test namespace, timed to the millisecond: `ping(8)` prints too coarse
/// and too late for "how soon after the host interface returned does the guest answer".
public final class ICMPPinger: Sendable {
    private let fd: Mutex<Int32>
    public let target: String
    private let address: UInt32
    private let identifier: UInt16
    private let sequence = Atomic<UInt16>(0)

    /// `init` on a thread of its own (it enters the namespace).
    public static func open(target: String, in namespace: NetworkNamespace) async throws -> ICMPPinger {
        try await offPool { try ICMPPinger(target: target, in: namespace) }
    }

    /// A raw ICMP socket made inside `namespace` (it stays there) for echoes to the IPv4 `target`.
    /// Enters the namespace on the calling thread: async code uses `open`.
    @available(*, noasync, message: "enters the namespace on a cooperative pool thread: use ICMPPinger.open")
    public init(target: String, in namespace: NetworkNamespace) throws {
        var parsed = in_addr()
        guard inet_pton(AF_INET, target, &parsed) == 1 else { throw ICMPPingerError("parse address \(target)", 0) }
        self.target = target
        address = parsed.s_addr
        identifier = UInt16(
            truncatingIfNeeded: getpid() &+ Int32(ICMPPinger.instances.add(1, ordering: .relaxed).newValue))
        let created: Int32 = try namespace.withEntered {
            let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_ICMP))
            guard fd >= 0 else { throw ICMPPingerError("open raw ICMP socket", errno) }
            return fd
        }
        fd = Mutex(created)
    }

    deinit { close() }

    public func close() {
        fd.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    /// Sends one echo request; returns its sequence number. Send errors (no route or neighbour
    /// while the path is down) count as a lost echo, not a failure.
    @discardableResult
    public func send() -> UInt16 {
        let number = sequence.add(1, ordering: .relaxed).newValue
        var packet: [UInt8] = [
            8, 0, 0, 0, UInt8(identifier >> 8), UInt8(identifier & 0xFF), UInt8(number >> 8),
            UInt8(number & 0xFF),
        ]
        packet += Array(repeating: 0x5A, count: 24)
        let checksum = Self.checksum(packet)
        packet[2] = UInt8(checksum >> 8)
        packet[3] = UInt8(checksum & 0xFF)
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_addr.s_addr = address
        fd.withLock { fd in
            _ = withUnsafePointer(to: &destination) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { target in
                    packet.withUnsafeBytes {
                        sendto(
                            fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT), target,
                            socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
        }
        return number
    }

    /// Sequence numbers of our echo replies that arrived within `timeout` (at least one, or none
    /// when the time ran out). Waits on the calling thread: for threads of their own.
    @available(
        *, noasync, message: "blocks a cooperative pool thread: use firstReplyInBackground or streamInBackground"
    )
    public func receiveReplies(timeout: Duration) -> [UInt16] {
        var pollDescriptor = pollfd(fd: fd.withLock { $0 }, events: Int16(POLLIN), revents: 0)
        // Rounded up: rounding the sub-millisecond waits between echoes down to zero would spin a
        // core, which on a small machine delays the very guest and daemon being timed.
        let (seconds, attoseconds) = max(timeout, .zero).components
        let microseconds = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        guard poll(&pollDescriptor, 1, Int32((microseconds + 999) / 1000)) > 0 else { return [] }
        var replies: [UInt16] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while true {
            let count = fd.withLock { fd in
                buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
            guard count > 0 else { break }
            // The raw socket hands over the IP header too.
            let headerLength = Int(buffer[0] & 0x0F) * 4
            guard count >= headerLength + 8, buffer[headerLength] == 0 else { continue }
            let id = UInt16(buffer[headerLength + 4]) << 8 | UInt16(buffer[headerLength + 5])
            guard id == identifier else { continue }
            replies.append(UInt16(buffer[headerLength + 6]) << 8 | UInt16(buffer[headerLength + 7]))
        }
        return replies
    }

    /// Echoes every `interval` until the first reply; returns how long after the call it came,
    /// or nil after `timeout`.
    @available(*, noasync, message: "blocks a cooperative pool thread: use firstReplyInBackground")
    public func firstReply(interval: Duration, timeout: Duration) -> Duration? {
        // Replies to an earlier call's echoes may still sit in the socket: only this call's count.
        _ = receiveReplies(timeout: .zero)
        let clock = ContinuousClock()
        let start = clock.now
        var sent = Set<UInt16>()
        while clock.now - start < timeout {
            sent.insert(send())
            let nextSend = clock.now + interval
            while clock.now < nextSend {
                if receiveReplies(timeout: nextSend - clock.now).contains(where: sent.contains) {
                    return clock.now - start
                }
            }
        }
        return nil
    }

    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var index = 0
        while index + 1 < bytes.count {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
            index += 2
        }
        if index < bytes.count { sum += UInt32(bytes[index]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    private static let instances = Atomic<Int32>(0)
}

public struct ICMPPingerError: Error, CustomStringConvertible {
    public var description: String
    init(_ operation: String, _ code: Int32) {
        description =
            code == 0 ? "ICMP: cannot \(operation)" : "ICMP: cannot \(operation): \(String(cString: strerror(code)))"
    }
}

extension ICMPPinger {
    /// A steady echo stream: sends every `interval` for `duration` and reports which echoes were
    /// answered, in send order (the bond failover gap is the run of unanswered ones).
    @available(*, noasync, message: "blocks a cooperative pool thread: use streamInBackground")
    public func stream(interval: Duration, for duration: Duration) -> [(sent: ContinuousClock.Instant, answered: Bool)]
    {
        _ = receiveReplies(timeout: .zero)
        let clock = ContinuousClock()
        let end = clock.now + duration
        var sent: [(UInt16, ContinuousClock.Instant)] = []
        var answered = Set<UInt16>()
        while clock.now < end {
            sent.append((send(), clock.now))
            let nextSend = clock.now + interval
            while clock.now < nextSend {
                answered.formUnion(receiveReplies(timeout: nextSend - clock.now))
            }
        }
        answered.formUnion(receiveReplies(timeout: .milliseconds(200)))
        return sent.map { ($0.1, answered.contains($0.0)) }
    }
}

extension ICMPPinger {
    /// `stream` on a thread of its own, so the cooperative pool stays free for what the test does
    /// meanwhile (flapping interfaces, watching the guest).
    public func streamInBackground(interval: Duration, for duration: Duration) async -> [(
        sent: ContinuousClock.Instant, answered: Bool
    )] {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: self.stream(interval: interval, for: duration)) }
            thread.start()
        }
    }

    /// `firstReply` on a thread of its own.
    public func firstReplyInBackground(interval: Duration, timeout: Duration) async -> Duration? {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: self.firstReply(interval: interval, timeout: timeout))
            }
            thread.start()
        }
    }
}
