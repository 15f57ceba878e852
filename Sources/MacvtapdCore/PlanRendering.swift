extension Action {
    /// `+`, `-` or `~`: what the action does to the world, for human plans.
    public var symbol: String {
        switch self {
        case .createMacvtap, .attachBackend: return "+"
        case .deleteMacvtap, .detachBackend: return "-"
        case .setMacvtapUp, .setMacvtapDown, .setGuestLink, .announce: return "~"
        }
    }

    /// One line a person reads in a plan or a log.
    public var summary: String {
        switch self {
        case .createMacvtap(let spec):
            return "create macvtap \(spec.name) on \(spec.lowerName) (mode \(spec.mode.rawValue), mac \(spec.mac))"
        case .setMacvtapUp(_, let name):
            return "bring macvtap \(name) up"
        case .setMacvtapDown(_, let name):
            return "take macvtap \(name) down"
        case .deleteMacvtap(let ifindex, let name):
            return "delete macvtap \(name) (ifindex \(ifindex))"
        case .attachBackend(_, let nic, let macvtap, let hub):
            return "attach \(macvtap) to NIC \(nic) on hub \(hub)"
        case .detachBackend(_, let backend):
            let parts = [backend.hasPort ? backend.ids.port : nil, backend.hasTap ? backend.ids.tap : nil]
            return "detach backend \(parts.compactMap { $0 }.joined(separator: " + "))"
        case .setGuestLink(_, let nic, let up):
            return "set guest link of \(nic) \(up ? "up" : "down")"
        case .announce(_, let nic):
            return "announce NIC \(nic) (guest gratuitous ARP, QEMU RARP)"
        }
    }
}

/// Renders plans for people, in the spirit of `terraform plan`.
public enum PlanRenderer {
    public static func human(_ plan: Plan) -> String {
        var lines: [String] = []
        let width = plan.bindings.map { $0.key.description.count }.max() ?? 0
        for binding in plan.bindings {
            let name = binding.key.description.padding(to: width)
            if binding.actions.isEmpty {
                lines.append("    \(name)  \(binding.phase.rawValue): \(binding.reason.message)")
                continue
            }
            let symbol = binding.change.symbol.padding(to: 3)
            lines.append("\(symbol) \(name)  \(binding.reason.message)")
            for action in binding.actions {
                lines.append("        \(action.symbol) \(action.summary)")
            }
        }
        lines.append("")
        lines.append(summaryLine(plan))
        return lines.joined(separator: "\n")
    }

    /// `Plan: 1 to create, 0 to update, 1 to replace, 0 to destroy; 3 unchanged, 1 waiting.`, or
    /// `No changes: ...`. A binding whose VM did not answer is "unknown", never "unchanged": what it
    /// needs could not be observed.
    public static func summaryLine(_ plan: Plan) -> String {
        var standing = "\(plan.count(.unchanged)) unchanged, \(plan.count(.waiting)) waiting"
        let unknown = plan.count(.unknown)
        if unknown > 0 { standing += ", \(unknown) unknown (VM not answering)" }
        guard plan.hasChanges else {
            return unknown > 0 ? "No changes known: \(standing)." : "No changes: \(standing)."
        }
        return "Plan: \(plan.count(.create)) to create, \(plan.count(.update)) to update, "
            + "\(plan.count(.replace)) to replace, \(plan.count(.destroy)) to destroy; \(standing)."
    }
}

extension String {
    func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

// MARK: - JSON

/// The stable machine-readable plan (`macvtapd plan --json`), documented in README.md. Decodable too:
/// a plan made by the daemon reaches the CLI in this form over the control socket.
public struct PlanDocument: Codable, Sendable {
    public struct Summary: Codable, Sendable {
        public var create: Int
        public var update: Int
        public var replace: Int
        public var destroy: Int
        public var unchanged: Int
        /// Waiting for something outside macvtapd: a host interface, the VM to run here, a NIC.
        public var waiting: Int
        /// The VM did not answer: what these bindings need is not known.
        public var unknown: Int
    }

    public struct Binding: Codable, Sendable {
        public var vm: String
        public var nic: String
        public var desired: Bool
        public var change: ChangeKind
        public var phase: Phase
        public var reason: Reason
        public var lower: String?
        public var actions: [ActionDocument]
    }

    public var formatVersion = 1
    public var changes: Bool
    public var summary: Summary
    public var bindings: [Binding]

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version"
        case changes, summary, bindings
    }

    public init(_ plan: Plan) {
        changes = plan.hasChanges
        summary = Summary(
            create: plan.count(.create), update: plan.count(.update), replace: plan.count(.replace),
            destroy: plan.count(.destroy), unchanged: plan.count(.unchanged), waiting: plan.count(.waiting),
            unknown: plan.count(.unknown))
        bindings = plan.bindings.map { binding in
            Binding(
                vm: binding.key.vm, nic: binding.key.nic, desired: binding.isDesired, change: binding.change,
                phase: binding.phase, reason: binding.reason, lower: binding.lower,
                actions: binding.actions.map(ActionDocument.init))
        }
    }
}

/// One action as JSON: a `type` and the fields that type uses, nothing else.
public struct ActionDocument: Codable, Sendable {
    public var type: String
    public var summary: String
    public var name: String?
    public var ifindex: Int32?
    public var lower: String?
    public var lowerIfindex: Int32?
    public var mode: MacvtapMode?
    public var mac: MACAddress?
    public var alias: String?
    public var vm: String?
    public var nic: String?
    public var hub: Int?
    public var netdevs: [String]?
    public var up: Bool?

    enum CodingKeys: String, CodingKey {
        case type, summary, name, ifindex, lower, mode, mac, alias, vm, nic, hub, netdevs, up
        case lowerIfindex = "lower_ifindex"
    }

    public init(_ action: Action) {
        summary = action.summary
        vm = action.vm
        switch action {
        case .createMacvtap(let spec):
            type = "create_macvtap"
            name = spec.name
            lower = spec.lowerName
            lowerIfindex = spec.lowerIfindex
            mode = spec.mode
            mac = spec.mac
            alias = spec.alias
        case .setMacvtapUp(let index, let macvtap):
            type = "set_macvtap_up"
            ifindex = index
            name = macvtap
        case .setMacvtapDown(let index, let macvtap):
            type = "set_macvtap_down"
            ifindex = index
            name = macvtap
        case .deleteMacvtap(let index, let macvtap):
            type = "delete_macvtap"
            ifindex = index
            name = macvtap
        case .attachBackend(_, let nicID, let macvtap, let hubID):
            type = "attach_backend"
            nic = nicID
            name = macvtap
            hub = hubID
        case .detachBackend(_, let backend):
            type = "detach_backend"
            nic = backend.ids.nic
            ifindex = backend.ids.ifindex
            netdevs = [backend.hasPort ? backend.ids.port : nil, backend.hasTap ? backend.ids.tap : nil].compactMap {
                $0
            }
        case .setGuestLink(_, let nicID, let isUp):
            type = "set_guest_link"
            nic = nicID
            up = isUp
        case .announce(_, let nicID):
            type = "announce"
            nic = nicID
        }
    }
}
