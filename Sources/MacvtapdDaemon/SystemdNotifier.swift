import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The sd_notify datagram protocol, without libsystemd: `READY=1`, `STATUS=...`, `WATCHDOG=1`,
/// `RELOADING=1`, `STOPPING=1` sent to $NOTIFY_SOCKET. Does nothing when not run by systemd.
///
/// No call ever waits for systemd. The notification socket's queue holds only
/// `net.unix.max_dgram_qlen` datagrams (10 on some hosts), and a busy PID 1 lets it fill; a
/// blocking send would then stall whoever sent, which was the control loop. So every send is
/// non-blocking, and what does not fit is kept and retried off the caller's thread, coalesced: only
/// the latest lifecycle state (READY/RELOADING/STOPPING) and the latest STATUS= are worth
/// delivering, and one WATCHDOG=1 says as much as ten. Intermediate STATUS= lines are dropped.
public final class SystemdNotifier: Sendable {
    public let socketPath: String?
    /// Half of WATCHDOG_USEC (systemd's advice), when the watchdog is on for this process.
    public let watchdogInterval: Duration?

    /// Everything systemd has not been told yet.
    struct Pending {
        /// "READY", "RELOADING" or "STOPPING": only the latest matters (a READY that never got
        /// through before a RELOADING and the READY after it says nothing systemd needs).
        var lifecycle: String?
        var status: String?
        var watchdog = false
        var retryScheduled = false
        var retryDelay = SystemdNotifier.firstRetry
        /// Once stopping, nothing says ready again.
        var stopping = false

        var isEmpty: Bool { lifecycle == nil && status == nil && !watchdog }
    }

    static let firstRetry: Duration = .milliseconds(10)
    static let retryCap: Duration = .milliseconds(500)

    private let fd: Int32
    private let address: sockaddr_un
    private let addressLength: socklen_t
    private let pending = Mutex(Pending())

    public init(environment: [String: String] = SystemdNotifier.processEnvironment()) {
        let pidMatches = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if pidMatches, let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            watchdogInterval = .microseconds(Int64(usec / 2))
        } else {
            watchdogInterval = nil
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        // '@' names an abstract socket: its first byte is NUL on the wire.
        var pathBytes = Array((path ?? "").utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        if pathBytes.count >= MemoryLayout.size(ofValue: address.sun_path) { path = nil }
        var fd: Int32 = -1
        if path != nil {
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
            }
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        socketPath = fd >= 0 ? path : nil
        self.fd = fd
        self.address = address
        addressLength = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    public var isEnabled: Bool { socketPath != nil }

    public func ready(status: String? = nil) {
        enqueue {
            if !$0.stopping { $0.lifecycle = "READY" }
            if let status { $0.status = status }
        }
    }
    public func reloading() { enqueue { $0.lifecycle = $0.stopping ? $0.lifecycle : "RELOADING" } }
    public func stopping() {
        enqueue {
            $0.lifecycle = "STOPPING"
            $0.stopping = true
        }
    }
    public func status(_ text: String) { enqueue { $0.status = text } }
    public func watchdog() { enqueue { $0.watchdog = true } }

    /// True when nothing is waiting for the socket to have room.
    public var isDrained: Bool { pending.withLock { $0.isEmpty } }

    private func enqueue(_ change: (inout Pending) -> Void) {
        guard fd >= 0 else { return }
        pending.withLock { pending in
            change(&pending)
            flush(&pending)
        }
    }

    /// Sends what is pending, as one datagram, without waiting; on a full queue schedules a retry.
    /// Runs under the lock so that a retry and a new notification never reorder datagrams.
    private func flush(_ pending: inout Pending) {
        guard !pending.isEmpty else { return }
        var lines: [String] = []
        if let lifecycle = pending.lifecycle { lines.append("\(lifecycle)=1") }
        if let status = pending.status { lines.append("STATUS=\(status)") }
        if pending.watchdog { lines.append("WATCHDOG=1") }
        switch send(lines.joined(separator: "\n")) {
        case .sent, .failed:
            // A socket nobody listens on (ECONNREFUSED, ENOENT) is ignored, as sd_notify does: the
            // daemon's work does not depend on systemd listening.
            pending.lifecycle = nil
            pending.status = nil
            pending.watchdog = false
            pending.retryDelay = Self.firstRetry
        case .full:
            guard !pending.retryScheduled else { return }
            pending.retryScheduled = true
            let delay = pending.retryDelay
            pending.retryDelay = min(delay * 2, Self.retryCap)
            let nanoseconds =
                Int(delay.components.attoseconds / 1_000_000_000) + Int(delay.components.seconds) * 1_000_000_000
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
                self.pending.withLock { pending in
                    pending.retryScheduled = false
                    flush(&pending)
                }
            }
        }
    }

    enum SendResult { case sent, full, failed }

    private func send(_ message: String) -> SendResult {
        var address = self.address
        let bytes = Array(message.utf8)
        while true {
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes, bytes.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), $0, addressLength)
                }
            }
            if sent >= 0 { return .sent }
            switch errno {
            case EINTR: continue
            case EAGAIN, ENOBUFS, ENOMEM: return .full
            default: return .failed
            }
        }
    }

    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
