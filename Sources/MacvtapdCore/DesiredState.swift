/// Where a value came from in the operator's configuration, for messages that point at it.
public struct SourceLocation: Hashable, Sendable, Codable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// The macvtap mode (IFLA_MACVLAN_MODE) of the backend.
public enum MacvtapMode: String, Hashable, Sendable, Codable, CaseIterable {
    case bridge
    case vepa
    case `private`
    case passthru
}

/// What the guest NIC's carrier follows.
public enum LinkPolicy: String, Hashable, Sendable, Codable, CaseIterable {
    /// Guest carrier mirrors the host interface's carrier (down while it is missing or has none).
    case follow
    /// Guest carrier is up whenever a backend is attached, whatever the host interface's carrier.
    case up
}

/// How a binding finds its host (lower) interface.
public enum HostMatcher: Hashable, Sendable, CustomStringConvertible {
    /// The interface's current name.
    case name(String)
    /// The interface's MAC address (current, or permanent where the kernel reports one).
    case mac(MACAddress)
    /// udev's `ID_PATH` (`pci-0000:03:00.0`): the port's place on the bus, stable across renames.
    case path(String)
    /// udev properties (`ID_NET_NAME_PATH: enp3s0`, ...); every pair must match.
    case property([String: String])

    public var description: String {
        switch self {
        case .name(let name): return name
        case .mac(let mac): return "mac \(mac)"
        case .path(let path): return "path \(path)"
        case .property(let pairs):
            return "property " + pairs.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        }
    }

    /// Whether the matcher selects `link` from what is known about it now. Macvtaps and macvlans
    /// only ever match by name: they copy their lower's MAC and have no bus path of their own.
    public func matches(_ link: ObservedLink) -> Bool {
        if case .name(let name) = self { return link.name == name }
        guard link.kind != "macvtap" && link.kind != "macvlan" else { return false }
        switch self {
        case .name: return false
        case .mac(let mac): return link.mac == mac || link.permanentMAC == mac
        case .path(let path): return link.udevProperties?["ID_PATH"] == path
        case .property(let pairs):
            guard let properties = link.udevProperties, !pairs.isEmpty else { return false }
            return pairs.allSatisfy { properties[$0.key] == $0.value }
        }
    }

    /// True for matchers that only udev can answer.
    public var needsUdev: Bool {
        switch self {
        case .name, .mac: return false
        case .path, .property: return true
        }
    }
}

/// Identifies one binding: a NIC of a VM. Everything macvtapd owns is named from this pair.
public struct BindingKey: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var vm: String
    public var nic: String

    public init(vm: String, nic: String) {
        self.vm = vm
        self.nic = nic
    }

    /// `web1/nic0`: the form used in logs, status, metrics and plans.
    public var description: String { "\(vm)/\(nic)" }

    public static func < (lhs: BindingKey, rhs: BindingKey) -> Bool {
        (lhs.vm, lhs.nic) < (rhs.vm, rhs.nic)
    }
}

/// One VM NIC bound to a host interface, with every default already resolved.
public struct NICBinding: Hashable, Sendable {
    public var key: BindingKey
    public var host: HostMatcher
    public var mode: MacvtapMode
    /// The macvtap's MAC; nil means the NIC's MAC: its `-device mac=`, or with `followsGuestMAC`
    /// the MAC the guest programmed.
    public var mac: MACAddress?
    /// The QEMU hub the NIC sits on; nil means "discover it from the NIC's placeholder hubport".
    public var hub: Int?
    public var link: LinkPolicy
    /// Announce the guest (QMP `announce-self`: the guest's gratuitous ARPs and QEMU's RARPs) each
    /// time its carrier comes up on a backend, so switches and peers learn the MAC's new path at once.
    public var announce: Bool
    /// `mac: guest`: the macvtap follows the MAC the guest driver sets (libvirt's
    /// trustGuestRxFilters). Off by default: a guest must not pick its MAC on the wire.
    public var followsGuestMAC: Bool
    /// Where the NIC was declared, for messages.
    public var source: SourceLocation?
    /// How the VM is launched with this NIC (`macvtapd print`): the QEMU device model and, for
    /// users who pin PCI addresses, its bus and slot. The daemon itself never reads them.
    public var device: NICDevice

    public init(
        key: BindingKey, host: HostMatcher, mode: MacvtapMode = .bridge, mac: MACAddress? = nil,
        hub: Int? = nil, link: LinkPolicy = .follow, announce: Bool = true, followsGuestMAC: Bool = false,
        source: SourceLocation? = nil, device: NICDevice = NICDevice()
    ) {
        self.device = device
        self.followsGuestMAC = followsGuestMAC
        self.key = key
        self.host = host
        self.mode = mode
        self.mac = mac
        self.hub = hub
        self.link = link
        self.announce = announce
        self.source = source
    }

    /// True when the two bindings would produce the same backend (the source location aside).
    public func sameBackend(as other: NICBinding) -> Bool {
        key == other.key && host == other.host && mode == other.mode && mac == other.mac && hub == other.hub
            && followsGuestMAC == other.followsGuestMAC
    }
}

/// The guest NIC's QEMU device as `macvtapd print` writes it: `-device MODEL,...,bus=BUS,addr=ADDR`.
public struct NICDevice: Hashable, Sendable {
    public static let defaultModel = "virtio-net-pci"

    public var model: String
    /// The PCI bus (`pcie.0`, `pci.0`, a root port's id); nil lets QEMU choose.
    public var bus: String?
    /// The slot and function on that bus (`0x1e`, `0x1e.0x0`); nil lets QEMU choose.
    public var address: String?

    public init(model: String = NICDevice.defaultModel, bus: String? = nil, address: String? = nil) {
        self.model = model
        self.bus = bus
        self.address = address
    }

    /// QEMU's PCI `addr=` text, `slot[.function]`, each part one or two hex digits with an optional
    /// `0x`; nil when it is not that shape. Bounds (slot ≤ 0x1f, function ≤ 7) are the caller's.
    public static func pciSlotAndFunction(_ address: String) -> (slot: Int, function: Int?)? {
        let parts = address.split(separator: ".", omittingEmptySubsequences: false)
        func hex(_ part: Substring) -> Int? {
            let digits = part.hasPrefix("0x") || part.hasPrefix("0X") ? part.dropFirst(2) : part
            guard !digits.isEmpty, digits.count <= 2 else { return nil }
            return Int(digits, radix: 16)
        }
        guard (1...2).contains(parts.count), let slot = hex(parts[0]) else { return nil }
        guard parts.count == 2 else { return (slot, nil) }
        guard let function = hex(parts[1]) else { return nil }
        return (slot, function)
    }
}

/// A VM macvtapd manages and how to reach its QMP monitor.
public struct VMSpec: Hashable, Sendable {
    public var name: String
    /// Absolute path of the QMP unix socket reserved for macvtapd.
    public var qmp: String
    public var nics: [String: NICBinding]
    public var source: SourceLocation?

    public init(name: String, qmp: String, nics: [String: NICBinding], source: SourceLocation? = nil) {
        self.name = name
        self.qmp = qmp
        self.nics = nics
        self.source = source
    }

    /// The same VM as far as planning goes: the same monitor and the same bindings, every setting
    /// alike, wherever they were declared (a line added above a VM moves its source, not its plan).
    public func plansLike(_ other: VMSpec) -> Bool {
        guard name == other.name, qmp == other.qmp, nics.count == other.nics.count else { return false }
        return nics.allSatisfy { nic, binding in
            guard var theirs = other.nics[nic] else { return false }
            theirs.source = binding.source
            return theirs == binding
        }
    }

    /// The NICs whose guest-programmed MAC the observer must read (`mac: guest`).
    public var guestMACNICs: Set<String> { Set(nics.values.filter(\.followsGuestMAC).map(\.key.nic)) }
}

/// The operator's desired state after parsing, validation and default resolution.
public struct DesiredState: Hashable, Sendable {
    public var vms: [String: VMSpec]

    public init(vms: [String: VMSpec] = [:]) {
        self.vms = vms
    }

    /// Every binding, sorted by key so plans and status are stable.
    public var bindings: [NICBinding] {
        vms.values.flatMap { $0.nics.values }.sorted { $0.key < $1.key }
    }

    public func binding(_ key: BindingKey) -> NICBinding? {
        vms[key.vm]?.nics[key.nic]
    }
}
