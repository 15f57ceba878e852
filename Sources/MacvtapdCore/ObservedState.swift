/// One host network interface as rtnetlink reports it.
public struct ObservedLink: Hashable, Sendable {
    public var ifindex: Int32
    public var name: String
    /// IFLA_INFO_KIND: `veth`, `macvtap`, `bridge`, ...; nil for physical ports.
    public var kind: String? {
        didSet { owner = Self.owner(kind: kind, alias: alias) }
    }
    public var mac: MACAddress?
    /// IFLA_PERM_ADDRESS, where the kernel reports one (physical NICs).
    public var permanentMAC: MACAddress?
    public var adminUp: Bool
    public var carrier: Bool
    /// IFLA_LINK: the lower interface of a macvtap.
    public var lowerIfindex: Int32?
    /// IFLA_IFALIAS: where macvtapd writes its ownership mark.
    public var alias: String? {
        didSet { owner = Self.owner(kind: kind, alias: alias) }
    }
    public var macvtapMode: MacvtapMode?
    /// udev's properties of the link (`ID_PATH`, `ID_NET_NAME_PATH`, ...); nil when udev is not
    /// consulted (no udevd describes this network namespace).
    public var udevProperties: [String: String]?
    /// False while udevd has not finished with a new link: its name, MAC and properties may still
    /// change (renames happen right after the kernel announces a link). True without udevd.
    public var udevInitialized: Bool

    public init(
        ifindex: Int32, name: String, kind: String? = nil, mac: MACAddress? = nil, permanentMAC: MACAddress? = nil,
        adminUp: Bool = true, carrier: Bool = true, lowerIfindex: Int32? = nil, alias: String? = nil,
        macvtapMode: MacvtapMode? = nil, udevProperties: [String: String]? = nil, udevInitialized: Bool = true
    ) {
        self.ifindex = ifindex
        self.name = name
        self.kind = kind
        self.mac = mac
        self.permanentMAC = permanentMAC
        self.adminUp = adminUp
        self.carrier = carrier
        self.lowerIfindex = lowerIfindex
        self.alias = alias
        self.macvtapMode = macvtapMode
        self.udevProperties = udevProperties
        self.udevInitialized = udevInitialized
        owner = Self.owner(kind: kind, alias: alias)
    }

    public var isMacvtap: Bool { kind == "macvtap" }

    /// The binding that owns this interface: only macvtaps carrying macvtapd's alias mark have one.
    /// Parsed once when the link is observed, not at every lookup.
    public private(set) var owner: BindingKey?

    private static func owner(kind: String?, alias: String?) -> BindingKey? {
        kind == "macvtap" ? Ownership.binding(fromAlias: alias) : nil
    }
}

/// The host's interfaces at one instant, indexed once: a host with a thousand macvtaps is planned
/// for every VM, and linear scans per binding would make that quadratic.
public struct ObservedHost: Hashable, Sendable {
    public var links: [ObservedLink] {
        didSet { index = Index(links) }
    }
    private var index: Index

    private struct Index: Sendable {
        var byIfindex: [Int32: Int] = [:]
        var byName: [String: Int] = [:]
        /// Positions of the macvtaps macvtapd owns, sorted by the binding their mark names (then by
        /// position): a binding's or a VM's macvtaps are a binary search away. It held a copy of
        /// each such link in a dictionary by binding and another by VM, in one-element arrays:
        /// 0.6 MiB of the daemon's heap at 1,000 bindings.
        var owned: [Int32] = []

        init(_ links: [ObservedLink]) {
            byIfindex.reserveCapacity(links.count)
            byName.reserveCapacity(links.count)
            var owners: [(key: BindingKey, position: Int32)] = []
            for (position, link) in links.enumerated() {
                byIfindex[link.ifindex] = position
                byName[link.name] = byName[link.name] ?? position
                if let owner = link.owner { owners.append((owner, Int32(position))) }
            }
            owners.sort { ($0.key, $0.position) < ($1.key, $1.position) }
            owned = owners.map(\.position)
        }
    }

    public init(links: [ObservedLink] = []) {
        self.links = links
        index = Index(links)
    }

    public static func == (lhs: ObservedHost, rhs: ObservedHost) -> Bool { lhs.links == rhs.links }
    public func hash(into hasher: inout Hasher) { hasher.combine(links) }

    public func link(ifindex: Int32) -> ObservedLink? { index.byIfindex[ifindex].map { links[$0] } }
    public func link(named name: String) -> ObservedLink? { index.byName[name].map { links[$0] } }

    /// The interfaces a matcher selects, initialised by udev or not. Macvtaps and macvlans are
    /// never lowers by MAC or udev identity: they copy MACs.
    public func candidates(for matcher: HostMatcher) -> [ObservedLink] {
        // Names are unique in a namespace: the common matcher is a lookup, not a scan.
        if case .name(let name) = matcher { return link(named: name).map { [$0] } ?? [] }
        return links.filter { matcher.matches($0) }
    }

    /// Links udev is still working on (not macvtaps or macvlans, which are never lowers by
    /// identity): any of them may yet turn out to be the host a matcher wants, under another name.
    public var uninitializedLinks: [ObservedLink] {
        links.filter { !$0.udevInitialized && $0.kind != "macvtap" && $0.kind != "macvlan" }
    }

    /// The macvtaps macvtapd owns, by the binding their mark names.
    public var ownedMacvtaps: [BindingKey: [ObservedLink]] { grouped(owned(from: 0) { _ in true }) }

    /// The macvtaps macvtapd owns for the bindings of one VM.
    public func ownedMacvtaps(vm: String) -> [BindingKey: [ObservedLink]] {
        grouped(owned(from: firstOwned { $0.vm < vm }) { $0.vm == vm })
    }

    /// The macvtaps macvtapd owns for one binding (usually one; more after an interrupted replace),
    /// in the order of `links`.
    public func ownedMacvtaps(for key: BindingKey) -> [ObservedLink] {
        owned(from: firstOwned { $0 < key }) { $0 == key }
    }

    /// The first place in `index.owned` whose link's owner is not `below`.
    private func firstOwned(below: (BindingKey) -> Bool) -> Int {
        var low = 0
        var high = index.owned.count
        while low < high {
            let middle = (low + high) / 2
            if below(links[Int(index.owned[middle])].owner!) { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The owned links from place `start` on, while their owner is `within`.
    private func owned(from start: Int, while within: (BindingKey) -> Bool) -> [ObservedLink] {
        var found: [ObservedLink] = []
        for position in index.owned[start...] {
            let link = links[Int(position)]
            guard within(link.owner!) else { break }
            found.append(link)
        }
        return found
    }

    private func grouped(_ owned: [ObservedLink]) -> [BindingKey: [ObservedLink]] {
        var byKey: [BindingKey: [ObservedLink]] = [:]
        for link in owned { byKey[link.owner!, default: []].append(link) }
        return byKey
    }
}

/// A guest NIC as QEMU reports it.
public struct ObservedNIC: Hashable, Sendable {
    public var id: String
    /// The MAC `info network` shows: QEMU updates it when the guest programs another one.
    public var mac: MACAddress?
    /// The hub the NIC's peer hubport sits on; nil when the NIC is not on a hub.
    public var hub: Int?
    /// The `-device ... mac=` (QOM property `mac`), which the guest cannot change; nil when not read.
    public var deviceMAC: MACAddress?
    /// The MAC the guest driver programmed (`query-rx-filter` main-mac); read only for `mac: guest`.
    public var guestMAC: MACAddress?

    public init(id: String, mac: MACAddress?, hub: Int?, deviceMAC: MACAddress? = nil, guestMAC: MACAddress? = nil) {
        self.id = id
        self.mac = mac
        self.hub = hub
        self.deviceMAC = deviceMAC
        self.guestMAC = guestMAC
    }

    /// The MAC a binding's macvtap takes when the configuration names none.
    public func backendMAC(followingGuest: Bool) -> MACAddress? {
        followingGuest ? guestMAC ?? mac : deviceMAC ?? mac
    }
}

/// One backend macvtapd added to a VM, recognised by its netdev ids. Either half may be missing
/// when an earlier apply was interrupted.
public struct ObservedBackend: Hashable, Sendable {
    public var ids: Ownership.BackendIDs
    public var hasTap: Bool
    public var hasPort: Bool
    /// The hub the port sits on, when there is a port.
    public var hub: Int?

    public init(ids: Ownership.BackendIDs, hasTap: Bool, hasPort: Bool, hub: Int?) {
        self.ids = ids
        self.hasTap = hasTap
        self.hasPort = hasPort
        self.hub = hub
    }

    public var isComplete: Bool { hasTap && hasPort }
}

/// What a VM's QMP monitor told us, or why it could not.
public struct ObservedVM: Hashable, Sendable {
    public enum Reachability: Hashable, Sendable {
        case reachable
        /// No QEMU is listening (socket missing or refused): nothing holds a backend fd.
        case absent(String)
        /// Something listens but does not answer properly (hang, garbage, errors).
        case unresponsive(String)
    }

    public var name: String
    public var reachability: Reachability
    /// QEMU's run state (`query-status`); `.unknown` when the VM could not be asked.
    public var runState: RunState
    public var nics: [String: ObservedNIC]
    public var backends: [ObservedBackend]
    /// Guest carrier as macvtapd last set it; QEMU cannot be asked (DESIGN.md), so this is our record.
    public var guestLink: [String: Bool]

    public init(
        name: String, reachability: Reachability, runState: RunState = .unknown, nics: [String: ObservedNIC] = [:],
        backends: [ObservedBackend] = [], guestLink: [String: Bool] = [:]
    ) {
        self.name = name
        self.reachability = reachability
        self.runState = runState
        self.nics = nics
        self.backends = backends
        self.guestLink = guestLink
    }

    public static func absent(_ name: String, _ reason: String) -> ObservedVM {
        ObservedVM(name: name, reachability: .absent(reason))
    }

    public var isReachable: Bool { reachability == .reachable }
    public var running: Bool { runState == .running }
}

/// QEMU's run state as `query-status` names it. A struct over the string rather than an enum:
/// QEMU adds states, and one this build does not know is treated like `paused` (the VM is here,
/// its backends stay as they are).
public struct RunState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// Started with -S (libvirt starts every VM so): the guest has not run yet.
    public static let prelaunch = RunState(rawValue: "prelaunch")
    /// A destination waiting for (or receiving) an incoming migration.
    public static let inmigrate = RunState(rawValue: "inmigrate")
    public static let running = RunState(rawValue: "running")
    public static let paused = RunState(rawValue: "paused")
    /// The source during the final, stopped stage of a migration.
    public static let finishMigrate = RunState(rawValue: "finish-migrate")
    /// The source after a completed migration: the guest runs elsewhere now.
    public static let postmigrate = RunState(rawValue: "postmigrate")
    /// The guest powered off; QEMU still runs (-no-shutdown, as libvirt starts it).
    public static let shutdown = RunState(rawValue: "shutdown")
    /// Not observed (the monitor did not answer, or a cached observation lacks it).
    public static let unknown = RunState(rawValue: "unknown")

    public var description: String { rawValue }

    /// Where the guest's frames are to be delivered, from this host's point of view.
    public var role: MigrationRole {
        switch self {
        case .inmigrate: return .incoming
        case .finishMigrate, .postmigrate: return .departed
        default: return .resident
        }
    }
}

/// A VM's relation to this host during a live migration. Only a resident VM's macvtap may be up:
/// an up macvtap is in its lower's MAC table, and co-located VMs in bridge mode would deliver the
/// guest's frames to it even while the guest runs on another host.
public enum MigrationRole: Hashable, Sendable {
    /// The VM runs here, or will (prelaunch), or is paused here.
    case resident
    /// A destination before handover: backend ready, macvtap down, nothing announced.
    case incoming
    /// A source during and after handover: macvtap down, backend kept in case the migration fails.
    case departed
}

/// Everything the planner looks at besides the desired state.
public struct ObservedState: Hashable, Sendable {
    public var host: ObservedHost
    public var vms: [String: ObservedVM]

    public init(host: ObservedHost, vms: [String: ObservedVM]) {
        self.host = host
        self.vms = vms
    }
}
