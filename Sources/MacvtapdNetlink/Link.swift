import MacvtapdCore

/// A network interface as rtnetlink reports it: one RTM_NEWLINK message, decoded.
public struct Link: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var name: String
    /// IFLA_INFO_KIND (`veth`, `macvtap`, `bridge`, ...); nil for devices without a link type
    /// driver (physical NICs, loopback).
    public var kind: String?
    /// IFLA_ADDRESS when it is an Ethernet address.
    public var address: MACAddress?
    /// IFLA_PERM_ADDRESS: the burned-in address, reported by drivers that have one.
    public var permanentAddress: MACAddress?
    public var operationalState: OperationalState
    /// IFLA_CARRIER; nil when the kernel did not report it.
    public var hasCarrier: Bool?
    /// The raw ifi_flags (IFF_UP, IFF_LOWER_UP, ...).
    public var flags: UInt32
    public var mtu: UInt32?
    /// IFLA_LINK: the lower device (a macvtap's host interface, a veth's peer).
    public var lowerIndex: Int32?
    /// IFLA_LINK_NETNSID: set when `lowerIndex` lives in another network namespace.
    public var lowerNetnsID: Int32?
    /// IFLA_IFALIAS; macvtapd marks what it owns here. nil when unset.
    public var alias: String?
    /// IFLA_MACVLAN_MODE of a macvtap (or macvlan); nil for other kinds and unmanaged modes.
    public var macvtapMode: MacvtapMode?

    public init(
        index: Int32, name: String, kind: String? = nil, address: MACAddress? = nil,
        permanentAddress: MACAddress? = nil, operationalState: OperationalState = .unknown, hasCarrier: Bool? = nil,
        flags: UInt32 = 0, mtu: UInt32? = nil, lowerIndex: Int32? = nil, lowerNetnsID: Int32? = nil,
        alias: String? = nil, macvtapMode: MacvtapMode? = nil
    ) {
        self.index = index
        self.name = name
        self.kind = kind
        self.address = address
        self.permanentAddress = permanentAddress
        self.operationalState = operationalState
        self.hasCarrier = hasCarrier
        self.flags = flags
        self.mtu = mtu
        self.lowerIndex = lowerIndex
        self.lowerNetnsID = lowerNetnsID
        self.alias = alias
        self.macvtapMode = macvtapMode
    }

    /// IFF_UP: the administrator (or macvtapd) brought it up.
    public var isAdministrativelyUp: Bool { flags & interfaceUpFlag != 0 }
    public var isMacvtap: Bool { kind == "macvtap" }

    /// `mvt0123 (ifindex 7)`: how errors and logs name an interface.
    public var description: String { "\(name) (ifindex \(index))" }
}

/// IFLA_OPERSTATE (RFC 2863 operational status).
public enum OperationalState: UInt8, Hashable, Sendable, CaseIterable {
    case unknown = 0
    case notPresent = 1
    case down = 2
    case lowerLayerDown = 3
    case testing = 4
    case dormant = 5
    case up = 6
}
