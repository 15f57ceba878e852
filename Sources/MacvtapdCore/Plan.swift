/// Where a binding stands. The same words appear in plans, status, logs and metrics.
public enum Phase: String, Hashable, Sendable, Codable, CaseIterable {
    /// Backend attached and guest carrier up.
    case attached = "Attached"
    /// Backend attached, but the host interface has no carrier, so (with `link: follow`) the guest's is down.
    case noCarrier = "NoCarrier"
    /// The host interface does not exist: no backend, guest carrier down until it appears.
    case hostMissing = "HostMissing"
    /// Several interfaces match the host matcher; macvtapd does not guess.
    case hostAmbiguous = "HostAmbiguous"
    /// The VM's QMP monitor does not answer properly; the binding waits, nothing is torn down.
    case vmUnreachable = "VMUnreachable"
    /// No QEMU listens on the VM's monitor: the VM does not run on this host, so it has no macvtap.
    case vmNotRunning = "VMNotRunning"
    /// Destination of a live migration: backend attached, macvtap held down until the VM runs here.
    case migrating = "Migrating"
    /// Source after a live migration handed over: macvtap down, backend kept until QEMU exits.
    case migratedAway = "MigratedAway"
    /// The VM has no NIC with this id, or the NIC is not on a hub (or its MAC is unknown).
    case nicMissing = "NICMissing"
    /// Something macvtapd does not own stands in the way (e.g. its interface name is taken).
    case conflict = "Conflict"
    /// Torn down: the binding is gone from the desired state (orphans only).
    case removed = "Removed"
    /// Changes are planned or in flight.
    case pending = "Pending"
    /// The last attempt failed; it is retried.
    case failed = "Failed"

    /// Phases where everything that can be done is done.
    public var isSettled: Bool { self != .pending && self != .failed }

    /// Phases where a binding waits for something outside macvtapd (a host interface, a VM, a
    /// NIC, a name): not "unchanged", and not an error either.
    public var isWaiting: Bool {
        switch self {
        case .hostMissing, .hostAmbiguous, .vmNotRunning, .nicMissing, .conflict: return true
        default: return false
        }
    }
}

/// The macvtap a binding wants, as the executor creates it.
public struct MacvtapSpec: Hashable, Sendable, Encodable {
    public var name: String
    public var lowerIfindex: Int32
    public var lowerName: String
    public var mode: MacvtapMode
    public var mac: MACAddress
    /// The ownership mark (IFLA_IFALIAS).
    public var alias: String
    /// Created administratively up, or down (a migration destination before handover).
    public var up: Bool

    public init(
        name: String, lowerIfindex: Int32, lowerName: String, mode: MacvtapMode, mac: MACAddress, alias: String,
        up: Bool = true
    ) {
        self.up = up
        self.name = name
        self.lowerIfindex = lowerIfindex
        self.lowerName = lowerName
        self.mode = mode
        self.mac = mac
        self.alias = alias
    }
}

/// One idempotent operation on the host or a VM.
public enum Action: Hashable, Sendable {
    /// RTM_NEWLINK of a macvtap on the lower, with MAC, mode and ownership mark, brought up.
    case createMacvtap(MacvtapSpec)
    /// Bring an owned macvtap up: someone set it down, or its VM now runs here (migration handover).
    case setMacvtapUp(ifindex: Int32, name: String)
    /// Take an owned macvtap down (out of its lower's MAC table) while its VM does not run here.
    case setMacvtapDown(ifindex: Int32, name: String)
    /// RTM_DELLINK of an owned macvtap.
    case deleteMacvtap(ifindex: Int32, name: String)
    /// Open the macvtap named `macvtap` (resolved to its ifindex when executed: it may be created by
    /// an earlier action of the same plan), getfd, netdev_add tap, netdev_add hubport on `hub`.
    case attachBackend(vm: String, nic: String, macvtap: String, hub: Int)
    /// netdev_del of whichever of the backend's port and tap exist.
    case detachBackend(vm: String, backend: ObservedBackend)
    /// set_link on the guest NIC.
    case setGuestLink(vm: String, nic: String, up: Bool)
    /// announce-self for the NIC: the guest sends gratuitous ARPs (virtio-net guest announce) and
    /// QEMU sends RARPs, so the switch learns the MAC's new port and stale peers refresh at once.
    case announce(vm: String, nic: String)

    /// The VM the action talks to over QMP, if any.
    public var vm: String? {
        switch self {
        case .createMacvtap, .setMacvtapUp, .setMacvtapDown, .deleteMacvtap: return nil
        case .attachBackend(let vm, _, _, _), .detachBackend(let vm, _), .setGuestLink(let vm, _, _),
            .announce(let vm, _):
            return vm
        }
    }
}

/// Why a binding is where it is: a stable code for machines, a sentence for people.
public struct Reason: Hashable, Sendable, Codable {
    public var code: String
    public var message: String

    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// How a binding's plan changes the world, as `terraform plan` classifies resources.
public enum ChangeKind: String, Hashable, Sendable, Codable {
    case none
    /// A backend appears where there was none.
    case create
    /// Something attached is updated in place (guest carrier, macvtap brought up).
    case update
    /// The backend is replaced (stale, or the host interface, mode or MAC changed).
    case replace
    /// A backend goes away (host missing, binding removed).
    case destroy

    /// The symbol shown in human plans.
    public var symbol: String {
        switch self {
        case .none: return " "
        case .create: return "+"
        case .update: return "~"
        case .replace: return "-/+"
        case .destroy: return "-"
        }
    }
}

/// The plan for one binding, or for one orphan (something owned that no binding wants).
public struct BindingPlan: Hashable, Sendable {
    public var key: BindingKey
    /// False for orphans: owned objects whose binding is gone from the desired state.
    public var isDesired: Bool
    /// Where the binding stands once the actions are carried out.
    public var phase: Phase
    /// Why the plan is what it is ("host eth0 appeared", "backend bound to deleted macvtap 42").
    public var reason: Reason
    /// What status says once the actions succeeded ("attached to eth0 through ... on hub 10").
    public var settled: Reason
    public var change: ChangeKind
    public var actions: [Action]
    /// The host interface the binding resolves to, when it exists.
    public var lower: String?
    /// The guest carrier macvtapd recorded no longer holds: QEMU exited, or an incoming migration
    /// will replace the NIC's state with the source's. The record is dropped, so the carrier is set
    /// again once the VM runs here.
    public var guestLinkVoid = false

    public init(
        key: BindingKey, isDesired: Bool = true, phase: Phase, reason: Reason, settled: Reason? = nil,
        change: ChangeKind, actions: [Action], lower: String? = nil
    ) {
        self.key = key
        self.isDesired = isDesired
        self.phase = phase
        self.reason = reason
        self.settled = settled ?? reason
        self.change = change
        self.actions = actions
        self.lower = lower
    }
}

extension BindingPlan {
    /// How a binding without changes stands: as desired, waiting for something outside macvtapd,
    /// or unknown because its VM could not be observed.
    public enum Standing: Hashable, Sendable {
        case changing, unchanged, waiting, unknown
    }

    public var standing: Standing {
        if !actions.isEmpty { return .changing }
        if phase == .vmUnreachable { return .unknown }
        return phase.isWaiting ? .waiting : .unchanged
    }
}

/// The value `plan`, `apply --dry-run`, `apply` and the daemon all share.
public struct Plan: Hashable, Sendable {
    public var bindings: [BindingPlan]

    public init(bindings: [BindingPlan]) {
        self.bindings = bindings
    }

    public var hasChanges: Bool { bindings.contains { !$0.actions.isEmpty } }

    /// Count of binding plans per change kind, for the summary line. `.none` counts only the
    /// bindings that are as desired: waiting and unknown ones are counted apart.
    public func count(_ kind: ChangeKind) -> Int {
        bindings.filter { $0.change == kind && (kind != .none || $0.standing == .unchanged) }.count
    }

    public func count(_ standing: BindingPlan.Standing) -> Int { bindings.filter { $0.standing == standing }.count }

    /// Bindings whose VM could not be observed: the plan cannot say what they need.
    public var hasUnknowns: Bool { bindings.contains { $0.standing == .unknown } }
}
