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
        get { storage }
        set {
            storage = newValue
            index = Index(newValue)
        }
    }
    private var storage: [ObservedLink]
    private var index: Index

    private struct Index: Sendable {
        var byIfindex: [Int32: Int] = [:]
        /// The ifindex of the link with that name (the first one seen, should two share it).
        var byName: [String: Int32] = [:]
        /// Each binding's macvtaps by ifindex, in ifindex order (the kernel's order of creation),
        /// and each VM's bindings that have one. Ifindexes, not copies of the links: copies in
        /// one-element arrays, by binding and again by VM, were 0.6 MiB of the daemon's heap at
        /// 1,000 bindings.
        var owned: [BindingKey: [Int32]] = [:]
        var ownedByVM: [String: Set<BindingKey>] = [:]

        init(_ links: [ObservedLink]) {
            byIfindex.reserveCapacity(links.count)
            byName.reserveCapacity(links.count)
            for (position, link) in links.enumerated() {
                byIfindex[link.ifindex] = position
                if byName[link.name] == nil { byName[link.name] = link.ifindex }
                if link.owner != nil { own(link) }
            }
        }

        mutating func own(_ link: ObservedLink) {
            guard let owner = link.owner else { return }
            var ifindexes = owned[owner] ?? []
            guard !ifindexes.contains(link.ifindex) else { return }
            ifindexes.insert(link.ifindex, at: ifindexes.firstIndex { $0 > link.ifindex } ?? ifindexes.endIndex)
            owned[owner] = ifindexes
            ownedByVM[owner.vm, default: []].insert(owner)
        }

        mutating func disown(_ link: ObservedLink) {
            guard let owner = link.owner, var ifindexes = owned[owner] else { return }
            ifindexes.removeAll { $0 == link.ifindex }
            if !ifindexes.isEmpty {
                owned[owner] = ifindexes
                return
            }
            owned[owner] = nil
            ownedByVM[owner.vm]?.remove(owner)
            if ownedByVM[owner.vm]?.isEmpty == true { ownedByVM[owner.vm] = nil }
        }
    }

    public init(links: [ObservedLink] = []) {
        storage = links
        index = Index(links)
    }

    /// Adds `link`, or replaces the link with its ifindex, and keeps the indexes current: a cache
    /// that follows link events one at a time costs a few lookups per event, not a rebuild of
    /// every index over a thousand links.
    public mutating func update(_ link: ObservedLink) {
        if let position = index.byIfindex[link.ifindex] {
            let before = storage[position]
            storage[position] = link
            if before.name != link.name {
                unname(before)
                if index.byName[link.name] == nil { index.byName[link.name] = link.ifindex }
            }
            if before.owner != link.owner {
                index.disown(before)
                index.own(link)
            }
        } else {
            index.byIfindex[link.ifindex] = storage.count
            storage.append(link)
            if index.byName[link.name] == nil { index.byName[link.name] = link.ifindex }
            index.own(link)
        }
    }

    /// Removes the link with `ifindex` (the last link takes its place in `links`); returns it.
    @discardableResult
    public mutating func remove(ifindex: Int32) -> ObservedLink? {
        guard let position = index.byIfindex.removeValue(forKey: ifindex) else { return nil }
        let removed = storage[position]
        let last = storage.count - 1
        if position != last {
            storage[position] = storage[last]
            index.byIfindex[storage[position].ifindex] = position
        }
        storage.removeLast()
        unname(removed)
        index.disown(removed)
        return removed
    }

    /// `link`'s name no longer points at it; another link of that name (never two in one namespace
    /// at one time, but a cache may briefly hold both) takes it over.
    private mutating func unname(_ link: ObservedLink) {
        guard index.byName[link.name] == link.ifindex else { return }
        index.byName[link.name] = storage.first { $0.name == link.name && $0.ifindex != link.ifindex }?.ifindex
    }

    public static func == (lhs: ObservedHost, rhs: ObservedHost) -> Bool { lhs.links == rhs.links }
    public func hash(into hasher: inout Hasher) { hasher.combine(links) }

    public func link(ifindex: Int32) -> ObservedLink? { index.byIfindex[ifindex].map { storage[$0] } }
    public func link(named name: String) -> ObservedLink? { index.byName[name].flatMap(link(ifindex:)) }

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
    public var ownedMacvtaps: [BindingKey: [ObservedLink]] { index.owned.mapValues(links(ifindexes:)) }

    /// The macvtaps macvtapd owns for the bindings of one VM.
    public func ownedMacvtaps(vm: String) -> [BindingKey: [ObservedLink]] {
        var byKey: [BindingKey: [ObservedLink]] = [:]
        for key in index.ownedByVM[vm] ?? [] { byKey[key] = ownedMacvtaps(for: key) }
        return byKey
    }

    /// The macvtaps macvtapd owns for one binding (usually one; more after an interrupted replace),
    /// in ifindex order.
    public func ownedMacvtaps(for key: BindingKey) -> [ObservedLink] { links(ifindexes: index.owned[key] ?? []) }

    /// The bindings of one VM that have a macvtap of ours.
    public func ownedBindings(vm: String) -> Set<BindingKey> { index.ownedByVM[vm] ?? [] }

    /// Every binding that has a macvtap of ours.
    public var ownedBindings: Dictionary<BindingKey, [Int32]>.Keys { index.owned.keys }

    private func links(ifindexes: [Int32]) -> [ObservedLink] { ifindexes.compactMap(link(ifindex:)) }
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
    /// The guest carrier a set_link of the current QMP session set, by NIC, while nothing since
    /// (an event, a reconnect, a failed step) can have changed it: the NIC holds it for certain
    /// (backends come and go on the hub, the NIC keeps its link), so setting it again is redundant.
    /// Empty when unknown; a record read back from the status file never counts (a QEMU restarted
    /// meanwhile starts with its carrier up).
    public var guestLinkHeld: [String: Bool]

    public init(
        name: String, reachability: Reachability, runState: RunState = .unknown, nics: [String: ObservedNIC] = [:],
        backends: [ObservedBackend] = [], guestLink: [String: Bool] = [:], guestLinkHeld: [String: Bool] = [:]
    ) {
        self.name = name
        self.reachability = reachability
        self.runState = runState
        self.nics = nics
        self.backends = backends
        self.guestLink = guestLink
        self.guestLinkHeld = guestLinkHeld
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
