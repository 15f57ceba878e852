import MacvtapdCore

/// A network interface as the guest kernel names and numbers it.
public struct GuestNICIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The guest's interface name, e.g. `eth0`.
    public let name: String
    public let ifindex: Int
    /// The interface's MAC when the guest first saw it (before any bond could change it).
    public let mac: MACAddress

    public init(name: String, ifindex: Int, mac: MACAddress) {
        self.name = name
        self.ifindex = ifindex
        self.mac = mac
    }

    public var description: String { "\(name) ifindex=\(ifindex) mac=\(mac)" }
}

/// One fact the test guest's /init reports on its serial console (scripts/guest/init lists the
/// line formats). Lines that do not start with `GUEST ` are kernel or shell output.
public enum GuestEvent: Hashable, Sendable {
    /// `GUEST NIC eth0 ifindex=2 mac=52:54:00:00:00:10`, once per interface before `ready`; after
    /// `ready` only for an interface that appeared (hot-plug).
    case nic(GuestNICIdentity)
    /// `GUEST GONE eth0`: an interface vanished (hot-unplug), which macvtapd must never cause.
    case gone(String)
    /// `GUEST CARRIER eth0 up|down`: the initial state before `ready`, then every change.
    case carrier(interface: String, up: Bool)
    /// `GUEST BOND bond0 active=eth1|none`: an active-backup bond's active slave changed.
    case bond(String, active: String?)
    /// `GUEST PING 10.99.0.1 seq=3`: an echo reply to the guest's own ping arrived.
    case ping(target: String, sequence: Int)
    /// `GUEST READY`: configuration done, the carrier monitor is running.
    case ready
    /// `GUEST POWER BUTTON`: the ACPI power button was pressed; the guest powers off.
    case powerButton
    /// `GUEST ERROR <what>`: the guest could not do something the configuration asked for.
    case error(String)

    /// Parses one console line; nil for anything that is not a well-formed `GUEST` line.
    public init?(line: String) {
        let words = line.split(separator: " ")
        guard words.count >= 2, words[0] == "GUEST" else { return nil }
        func value(_ word: Substring, _ key: String) -> Substring? {
            word.hasPrefix(key + "=") ? word.dropFirst(key.count + 1) : nil
        }
        switch (words[1], words.count) {
        case ("READY", 2):
            self = .ready
        case ("POWER", 3) where words[2] == "BUTTON":
            self = .powerButton
        case ("ERROR", 3...):
            self = .error(words.dropFirst(2).joined(separator: " "))
        case ("NIC", 5):
            guard let ifindex = value(words[3], "ifindex").flatMap({ Int($0) }),
                let mac = value(words[4], "mac").flatMap({ MACAddress($0) })
            else { return nil }
            self = .nic(GuestNICIdentity(name: String(words[2]), ifindex: ifindex, mac: mac))
        case ("GONE", 3):
            self = .gone(String(words[2]))
        case ("CARRIER", 4) where words[3] == "up" || words[3] == "down":
            self = .carrier(interface: String(words[2]), up: words[3] == "up")
        case ("BOND", 4):
            guard let active = value(words[3], "active") else { return nil }
            self = .bond(String(words[2]), active: active == "none" ? nil : String(active))
        case ("PING", 4):
            guard let sequence = value(words[3], "seq").flatMap({ Int($0) }) else { return nil }
            self = .ping(target: String(words[2]), sequence: sequence)
        default:
            return nil
        }
    }
}
