import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Wall-clock microseconds (CLOCK_REALTIME): the time base of QEMU's QMP event timestamps and of
/// `bridge -timestamp monitor`, so everything a live-migration measurement compares shares it.
public enum WallClock {
    public static func now() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000
    }
}

extension Duration {
    /// A span between two `WallClock` instants.
    public static func wall(_ microseconds: Int64) -> Duration { .microseconds(microseconds) }
}

// MARK: - The guest's own heartbeat

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

// MARK: - Echo streams

/// ICMP echoes from a client every `interval` until `stop()`, on a thread of its own, with the wall
/// time each was sent and each reply arrived.
public final class PingStream: Sendable {
    public struct Echo: Sendable {
        public let sent: Int64
        public let replied: Int64?
    }

    public let target: String
    private let stopping = Atomic<Bool>(false)
    private let result = Mutex<[Echo]?>(nil)

    public init(_ pinger: ICMPPinger, interval: Duration) {
        target = pinger.target
        Thread { [self] in run(pinger, interval: interval) }.start()
    }

    /// Stops sending, waits 200 ms for late replies, and returns every echo in send order.
    public func stop() async -> [Echo] {
        stopping.store(true, ordering: .relaxed)
        while true {
            if let echoes = result.withLock({ $0 }) { return echoes }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    private func run(_ pinger: ICMPPinger, interval: Duration) {
        _ = pinger.receiveReplies(timeout: .zero)
        var sent: [(sequence: UInt16, at: Int64)] = []
        var replies: [UInt16: Int64] = [:]
        let clock = ContinuousClock()
        func collect(until deadline: ContinuousClock.Instant) {
            while clock.now < deadline {
                let got = pinger.receiveReplies(timeout: deadline - clock.now)
                let now = WallClock.now()
                for sequence in got where replies[sequence] == nil { replies[sequence] = now }
            }
        }
        var next = clock.now
        while !stopping.load(ordering: .relaxed) {
            sent.append((pinger.send(), WallClock.now()))
            next += interval
            collect(until: next)
        }
        collect(until: clock.now + .milliseconds(200))
        // Sequence numbers wrap at 65,536 echoes (over 2 minutes at 2 ms): a stream is shorter.
        let echoes = sent.map { Echo(sent: $0.at, replied: replies[$0.sequence]) }
        result.withLock { $0 = echoes }
    }

    /// The longest time without a reply, from the reply before it to the one that ended it (by
    /// arrival: replies that QEMU delivers late in a burst do not hide a silence). Nil when fewer
    /// than two replies arrived.
    public static func longestSilence(_ echoes: [Echo]) -> (from: Int64, to: Int64)? {
        let arrivals = echoes.compactMap(\.replied).sorted()
        guard arrivals.count > 1 else { return nil }
        var longest = (from: arrivals[0], to: arrivals[1])
        for (earlier, later) in zip(arrivals, arrivals.dropFirst()) where later - earlier > longest.to - longest.from {
            longest = (earlier, later)
        }
        return longest
    }

    /// Echoes sent before `instant` that were not answered within `patience`: lost, for a client.
    public static func lost(_ echoes: [Echo], sentBefore instant: Int64, patience: Duration) -> [Echo] {
        let limit = patience.components.seconds * 1_000_000 + patience.components.attoseconds / 1_000_000_000_000
        return echoes.filter { echo in
            guard echo.sent < instant else { return false }
            guard let replied = echo.replied else { return true }
            return replied - echo.sent > limit
        }
    }
}

// MARK: - The switch's forwarding database

/// `bridge -timestamp monitor fdb` in the switch's namespace: every entry the bridge learns, moves
/// or forgets, with the kernel notification's wall time as iproute2 stamps it on receipt.
public final class FDBMonitor: Sendable {
    public struct Entry: Sendable, CustomStringConvertible {
        public let at: Int64
        public let mac: MACAddress
        public let port: String
        public let deleted: Bool
        public var description: String { "\(deleted ? "deleted " : "")\(mac) on \(port) at \(at)" }
    }

    private let monitor: TimestampedMonitor

    public init(in namespace: NetworkNamespace, logPath: String) async throws {
        monitor = try await TimestampedMonitor(
            ["netns", "exec", namespace.name, "bridge", "-timestamp", "monitor", "fdb"], logPath: logPath)
    }

    public func stop() async { await monitor.stop() }

    /// Every notification so far (iproute2 flushes each one).
    public func entries() -> [Entry] {
        monitor.notifications().compactMap { note in
            let words = note.words
            guard words.count >= 3, let mac = MACAddress(String(words[0])), words[1] == "dev" else { return nil }
            return Entry(at: note.at, mac: mac, port: String(words[2]), deleted: note.deleted)
        }
    }

    /// The ports `mac` was learned on after `instant`, each change once (a port it already had is no
    /// move), starting from `port`.
    public func moves(of mac: MACAddress, after instant: Int64, from port: String?) -> [Entry] {
        var current = port
        var moves: [Entry] = []
        for entry in entries() where entry.mac == mac && entry.at > instant && !entry.deleted {
            if entry.port != current { moves.append(entry) }
            current = entry.port
        }
        return moves
    }
}

/// `ip -timestamp monitor link` in a host's namespace: when the kernel announced each link's
/// administrative state (RTM_NEWLINK, sent once the change is done, RTNL still held).
public final class LinkStateMonitor: Sendable {
    public struct Change: Sendable {
        public let at: Int64
        public let name: String
        public let up: Bool
        public let deleted: Bool
    }

    private let monitor: TimestampedMonitor

    public init(in namespace: NetworkNamespace, logPath: String) async throws {
        monitor = try await TimestampedMonitor(
            ["-n", namespace.name, "-timestamp", "monitor", "link"], logPath: logPath)
    }

    public func stop() async { await monitor.stop() }

    public func changes() -> [Change] {
        monitor.notifications().compactMap { note in
            let words = note.words
            // `14: mvt8801f676c286@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ...`
            guard words.count >= 3, words[0].hasSuffix(":"), words[2].hasPrefix("<") else { return nil }
            let name = words[1].split(separator: "@").first.map(String.init) ?? ""
            let flags = words[2].dropFirst().dropLast().split(separator: ",")
            return Change(at: note.at, name: name, up: flags.contains("UP"), deleted: note.deleted)
        }
    }

    /// When `name` was first announced in state `up` after `instant`, having been otherwise before.
    public func firstTurned(_ name: String, up: Bool, after instant: Int64) -> Int64? {
        var last: Bool?
        for change in changes() where change.name == name && !change.deleted {
            if change.at > instant, change.up == up, last != up { return change.at }
            last = change.up
        }
        return nil
    }
}

/// An iproute2 monitor started with `-timestamp` (`ip ...` arguments), its notifications read back
/// from its log: each with the wall time iproute2 stamped on receipt and whether it was a deletion.
final class TimestampedMonitor: Sendable {
    struct Notification {
        let at: Int64
        let deleted: Bool
        /// The notification's line split at spaces, without the `Deleted` prefix.
        let words: [Substring]
    }

    private let process: BackgroundProcess

    /// Starts the monitor and gives it time to subscribe before returning.
    init(_ arguments: [String], logPath: String) async throws {
        process = try await BackgroundProcess.launch("/usr/sbin/ip", arguments, logPath: logPath)
        try await Task.sleep(for: .milliseconds(200))
    }

    func stop() async { await process.stop() }

    /// Every notification so far (iproute2 flushes each one).
    func notifications() -> [Notification] {
        var notifications: [Notification] = []
        var stamp: Int64?
        for line in process.log().split(separator: "\n") {
            if line.hasPrefix("Timestamp: ") {
                stamp = Self.parseStamp(String(line.dropFirst("Timestamp: ".count)))
                continue
            }
            var words = line.split(separator: " ")
            let deleted = words.first == "Deleted"
            if deleted { words.removeFirst() }
            guard let stamp else { continue }
            notifications.append(Notification(at: stamp, deleted: deleted, words: words))
        }
        return notifications
    }

    /// `Sun Dec  6 20:13:04 2026 841699 usec` (ctime in local time, then microseconds).
    static func parseStamp(_ text: String) -> Int64? {
        var fields = text.split(separator: " ")
        guard fields.count >= 7, fields.last == "usec", let micros = Int64(fields[fields.count - 2]) else { return nil }
        fields.removeLast(2)
        // strptime is not visible from Swift's Glibc: the five ctime fields by hand.
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let clock = fields.count == 5 ? fields[3].split(separator: ":").compactMap { Int32($0) } : []
        guard clock.count == 3, let month = months.firstIndex(of: String(fields[1])), let day = Int32(fields[2]),
            let year = Int32(fields[4])
        else { return nil }
        var time = tm()
        time.tm_year = year - 1900
        time.tm_mon = Int32(month)
        time.tm_mday = day
        time.tm_hour = clock[0]
        time.tm_min = clock[1]
        time.tm_sec = clock[2]
        time.tm_isdst = -1
        return Int64(mktime(&time)) * 1_000_000 + micros
    }
}

// MARK: - Live migration of a guest

/// One live migration as QEMU reports it.
public struct MigrationRecord: Sendable {
    /// `query-migrate` → `downtime`: how long the guest was stopped, by QEMU's own count.
    public var downtime: Duration
    /// `query-migrate` → `total-time`.
    public var totalTime: Duration
    /// When the migration command was sent (wall µs).
    public var startedAt: Int64
    /// The source's STOP (its final stage began; wall µs, QEMU's stamp).
    public var sourceStoppedAt: Int64
    /// The destination's RESUME: the handover (wall µs, QEMU's stamp).
    public var resumedAt: Int64
}

public enum LiveMigration {
    /// The configuration for a guest's QEMU on one host: an extra monitor at `monitor` (the path the
    /// host's macvtapd is configured with, the same for every QEMU of the VM on that host), and for
    /// a destination `-incoming unix:<incoming>`.
    public static func configuration(_ base: GuestConfiguration, monitor: String, incoming: String? = nil)
        -> GuestConfiguration
    {
        var configuration = base
        configuration.extraQEMUArguments += ["-qmp", "unix:\(monitor),server=on,wait=off"]
        if let incoming { configuration.extraQEMUArguments += ["-incoming", "unix:\(incoming)"] }
        return configuration
    }

    /// Migrates `source` to `destination` (started with `-incoming unix:<incoming>`) over QMP
    /// `migrate`, through each VM's test monitor, and waits for the destination's RESUME.
    public static func migrate(
        _ source: GuestVM, to destination: GuestVM, incoming: String, timeout: Duration = .seconds(30)
    ) async throws -> MigrationRecord {
        let from = try await QMPClient.connect(to: source.testQMPSocketPath)
        let to: QMPClient
        do {
            to = try await QMPClient.connect(to: destination.testQMPSocketPath)
        } catch {
            await from.close()
            throw error
        }
        let stamps = HandoverStamps()
        let watchers = [
            Task {
                for await event in from.events where event.name == "STOP" {
                    stamps.value.withLock { $0.stop = $0.stop ?? event.timestampMicroseconds }
                }
            },
            Task {
                for await event in to.events where event.name == "RESUME" {
                    stamps.value.withLock { $0.resume = $0.resume ?? event.timestampMicroseconds }
                }
            },
        ]
        func finish() async {
            await from.close()
            await to.close()
            for watcher in watchers { await watcher.value }
        }
        do {
            let startedAt = WallClock.now()
            try await from.execute("migrate", arguments: .object(["uri": .string("unix:\(incoming)")]))
            let deadline = ContinuousClock.now + timeout
            var info: JSONValue = .object([:])
            while true {
                info = try await from.execute("query-migrate")
                let status = info["status"]?.stringValue ?? "none"
                if status == "completed" { break }
                if ["failed", "cancelled"].contains(status) || ContinuousClock.now > deadline {
                    throw ChildError("migration \(status): \(info)")
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            while stamps.value.withLock({ $0.stop == nil || $0.resume == nil }) {
                guard ContinuousClock.now < deadline else {
                    throw ChildError(
                        "no STOP on the source or no RESUME on the destination: \(stamps.value.withLock { $0 })")
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            let (stop, resume) = stamps.value.withLock { $0 }
            await finish()
            return MigrationRecord(
                downtime: .milliseconds(info["downtime"]?.intValue ?? -1),
                totalTime: .milliseconds(info["total-time"]?.intValue ?? -1), startedAt: startedAt,
                sourceStoppedAt: stop ?? 0, resumedAt: resume ?? 0)
        } catch {
            await finish()
            throw error
        }
    }
}

/// The STOP and RESUME stamps of one migration, filled by the event watchers.
private final class HandoverStamps: Sendable {
    let value = Mutex<(stop: Int64?, resume: Int64?)>((nil, nil))
}

// MARK: - What the guest sends, seen on its own hub

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
