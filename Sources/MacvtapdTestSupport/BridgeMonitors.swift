import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

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
