/// The reconcile function: (desired, observed) → plan. Pure, deterministic, no I/O.
///
/// Each binding is planned on its own from what is observed now (level-triggered): what changed
/// since last time does not matter, only how the world differs from the desired state.
public enum Planner {
    public static func plan(desired: DesiredState, observed: ObservedState) -> Plan {
        plan(desired: desired, observed: observed, vms: nil)
    }

    /// The plan for the bindings and orphans of `vms` only (nil: every VM). The daemon reconciles one
    /// VM at a time; planning the whole host for each would make a resync quadratic.
    public static func plan(desired: DesiredState, observed: ObservedState, vms: Set<String>?) -> Plan {
        let bindings =
            vms.map { names in
                names.sorted().flatMap { name in desired.vms[name]?.nics.values.sorted { $0.key < $1.key } ?? [] }
            } ?? desired.bindings
        var plans = bindings.map { binding in
            planBinding(binding, observed: observed, owned: observed.host.ownedMacvtaps(for: binding.key))
        }
        plans += planOrphans(desired: desired, observed: observed, vms: vms)
        return Plan(bindings: plans)
    }

    // MARK: - One desired binding

    /// `owned`: the binding's macvtaps in ifindex order (`ObservedHost.ownedMacvtaps(for:)`), the
    /// order they are deleted in and the first one kept.
    static func planBinding(_ binding: NICBinding, observed: ObservedState, owned: [ObservedLink]) -> BindingPlan {
        let key = binding.key
        func waiting(_ phase: Phase, _ code: String, _ message: String) -> BindingPlan {
            BindingPlan(key: key, phase: phase, reason: Reason(code, message), change: .none, actions: [])
        }

        guard let vm = observed.vms[key.vm] else {
            return waiting(.vmUnreachable, "VMNotObserved", "VM \(key.vm) was not observed")
        }
        switch vm.reachability {
        case .reachable: break
        case .absent(let why):
            return planNotRunning(key, owned: owned, why: why)
        case .unresponsive(let why):
            return waiting(.vmUnreachable, "VMUnresponsive", "VM \(key.vm) does not answer on QMP: \(why)")
        }
        guard let nic = vm.nics[key.nic] else {
            return waiting(.nicMissing, "NICMissing", "VM \(key.vm) has no NIC \(key.nic)")
        }
        guard let hub = binding.hub ?? nic.hub else {
            return waiting(
                .nicMissing, "NICNotOnHub",
                "NIC \(key.nic) is not on a QEMU hub: give it a placeholder hubport or set hub: in the config")
        }
        guard let mac = binding.mac ?? nic.backendMAC(followingGuest: binding.followsGuestMAC) else {
            return waiting(.nicMissing, "MACUnknown", "the MAC of NIC \(key.nic) is unknown: set mac: in the config")
        }

        let backends = vm.backends.filter { $0.ids.nic == key.nic }.sorted { $0.ids.ifindex < $1.ids.ifindex }
        let recordedLink = vm.guestLink[key.nic]
        // A link udev has not finished with is not there yet: its name, MAC and udev properties may
        // still change, so acting on it could bind the wrong port. One that already carries our
        // macvtap was initialised when we created it (its udev entry went since, e.g. a cleaned
        // database): tearing down a working backend for that would cost the guest its carrier.
        let candidates = observed.host.candidates(for: binding.host).filter { link in
            link.udevInitialized || owned.contains { $0.lowerIfindex == link.ifindex }
        }
        if candidates.count > 1 {
            let names = candidates.map(\.name).sorted().joined(separator: ", ")
            return waiting(.hostAmbiguous, "HostAmbiguous", "\(names) all match host \(binding.host); not guessing")
        }

        guard let lower = candidates.first else {
            var plan = planHostMissing(
                binding, backends: backends, owned: owned,
                recordedLink: vm.runState.role == .incoming ? false : recordedLink,
                missing: describeMissing(binding.host, host: observed.host))
            plan.guestLinkVoid = vm.runState.role == .incoming
            return plan
        }

        let name = Ownership.macvtapName(for: key)
        if let squatter = observed.host.link(named: name), squatter.owner != key {
            return waiting(
                .conflict, "NameTaken",
                "interface name \(name) is taken by \(squatter.kind ?? "an interface") macvtapd does not own")
        }

        let wanted = owned.first { $0.lowerIfindex == lower.ifindex && $0.macvtapMode == binding.mode && $0.mac == mac }
        let goodBackend = wanted.flatMap { macvtap in
            backends.first { $0.ids.ifindex == macvtap.ifindex && $0.isComplete && $0.hub == hub }
        }
        let staleBackends = backends.filter { $0 != goodBackend }
        let staleMacvtaps = owned.filter { $0 != wanted }
        let role = vm.runState.role

        // Backends go before the macvtaps they hold, so QEMU never keeps a dead fd. A changed spec is
        // the root cause when both are stale, so its reason is reported first.
        var actions: [Action] = staleBackends.map { .detachBackend(vm: key.vm, backend: $0) }
        actions += staleMacvtaps.map { .deleteMacvtap(ifindex: $0.ifindex, name: $0.name) }
        let staleReasons =
            staleMacvtaps.map { describeStale($0, lower: lower, mode: binding.mode, mac: mac, host: observed.host) }
            + staleBackends.map { describeStale($0, hub: hub, host: observed.host) }

        if role == .departed {
            return planDeparted(
                key, wanted: wanted, actions: actions, staleReasons: staleReasons, lower: lower)
        }

        // Only a VM that runs here (or is about to: prelaunch, paused) gets its macvtap up; a
        // migration destination's stays down until handover, out of the lower's MAC table.
        let macvtapUp = role == .resident
        var attaching = false
        var comesUp = false
        if let wanted {
            if wanted.adminUp != macvtapUp {
                actions.append(
                    macvtapUp
                        ? .setMacvtapUp(ifindex: wanted.ifindex, name: wanted.name)
                        : .setMacvtapDown(ifindex: wanted.ifindex, name: wanted.name))
                comesUp = macvtapUp
            }
            if goodBackend == nil {
                actions.append(.attachBackend(vm: key.vm, nic: key.nic, macvtap: wanted.name, hub: hub))
                attaching = true
            }
        } else {
            let spec = MacvtapSpec(
                name: name, lowerIfindex: lower.ifindex, lowerName: lower.name, mode: binding.mode, mac: mac,
                alias: Ownership.alias(for: key), up: macvtapUp)
            actions.append(.createMacvtap(spec))
            actions.append(.attachBackend(vm: key.vm, nic: key.nic, macvtap: name, hub: hub))
            attaching = true
        }

        if role == .incoming {
            // No set_link: the incoming device state overwrites the NIC's link at handover, so the
            // carrier is asserted once the VM runs here. No announce: the guest is not here yet.
            var plan = planIncoming(
                key, actions: actions, attaching: attaching, staleReasons: staleReasons, lower: lower)
            plan.guestLinkVoid = true
            return plan
        }

        let linkUp = binding.link == .up || lower.carrier
        let linkChanges = recordedLink != linkUp
        // A new backend is set to the carrier wanted, unless this QMP session already set the NIC
        // to it (a lower that returns without carrier after its loss set the guest carrier down):
        // the NIC keeps its link through backend swaps, and a set_link is 70 bytes QEMU reads a
        // byte at a time before the attach counts as done.
        let linkHeld = recordedLink == linkUp && vm.guestLinkHeld[key.nic] == linkUp
        if (attaching && !linkHeld) || linkChanges {
            actions.append(.setGuestLink(vm: key.vm, nic: key.nic, up: linkUp))
        }
        // The carrier comes up on a new path (a new backend, a macvtap brought up at a migration's
        // handover, or a lower whose carrier returned, which a switch may have flushed the MAC from).
        // Not on adoption (recorded link unknown): nothing moved.
        if binding.announce && linkUp && (attaching || comesUp || recordedLink == false) {
            actions.append(.announce(vm: key.vm, nic: key.nic))
        }

        let phase: Phase = linkUp ? .attached : .noCarrier
        let settled =
            linkUp
            ? Reason("Converged", "attached to \(lower.name) through \(wanted?.name ?? name) on hub \(hub)")
            : Reason("NoCarrier", "attached to \(lower.name), which has no carrier; guest carrier down")
        let change: ChangeKind
        let reason: Reason
        if actions.isEmpty {
            change = .none
            reason = settled
        } else if !staleReasons.isEmpty && attaching {
            change = .replace
            reason = staleReasons[0]
        } else if attaching {
            change = .create
            reason = Reason("HostPresent", "host \(lower.name) is present and NIC \(key.nic) has no backend")
        } else if let wanted, comesUp {
            change = .update
            reason =
                staleReasons.first
                ?? Reason("VMRunsHere", "VM \(key.vm) runs here; macvtap \(wanted.name) comes up on \(lower.name)")
        } else {
            change = .update
            reason = staleReasons.first ?? describeLinkChange(recorded: recordedLink, up: linkUp, lower: lower)
        }
        return BindingPlan(
            key: key, phase: phase, reason: reason, settled: settled, change: change, actions: actions,
            lower: lower.name)
    }

    /// No QEMU listens on the monitor: the VM is not running on this host (shut down, never started
    /// here, or moved away). Nothing holds the macvtaps' fds, and an up macvtap would keep the
    /// guest's MAC in its lower's table, so co-located VMs could never reach the guest elsewhere.
    static func planNotRunning(_ key: BindingKey, owned: [ObservedLink], why: String) -> BindingPlan {
        let actions = owned.map { Action.deleteMacvtap(ifindex: $0.ifindex, name: $0.name) }
        let message = "VM \(key.vm) is not running on this host (\(why))"
        var plan = BindingPlan(
            key: key, phase: .vmNotRunning,
            reason: Reason("VMNotRunning", actions.isEmpty ? message : message + "; its macvtap goes"),
            settled: Reason("VMNotRunning", message), change: actions.isEmpty ? .none : .destroy, actions: actions)
        // The next QEMU starts with its NIC's carrier up, whatever was set on this one.
        plan.guestLinkVoid = true
        return plan
    }

    /// A migration destination: backend ready on a macvtap held down, no carrier or announce yet.
    static func planIncoming(
        _ key: BindingKey, actions: [Action], attaching: Bool, staleReasons: [Reason], lower: ObservedLink
    ) -> BindingPlan {
        let settled = Reason(
            "MigrationIncoming", "destination ready on \(lower.name), macvtap held down until the VM runs here")
        let change: ChangeKind =
            actions.isEmpty ? .none : attaching ? (staleReasons.isEmpty ? .create : .replace) : .update
        return BindingPlan(
            key: key, phase: .migrating, reason: actions.isEmpty ? settled : staleReasons.first ?? settled,
            settled: settled, change: change, actions: actions, lower: lower.name)
    }

    /// A migration source during or after handover: the guest runs elsewhere now, so the macvtap
    /// goes down (co-located VMs then reach it through the wire) but the backend stays: a failed or
    /// cancelled migration resumes the guest here.
    static func planDeparted(
        _ key: BindingKey, wanted: ObservedLink?, actions: [Action], staleReasons: [Reason], lower: ObservedLink
    ) -> BindingPlan {
        var actions = actions
        if let wanted, wanted.adminUp {
            actions.append(.setMacvtapDown(ifindex: wanted.ifindex, name: wanted.name))
        }
        let settled = Reason(
            "MigratedAway", "VM handed over to another host; macvtap on \(lower.name) held down until QEMU exits")
        let tearsDown = actions.contains {
            if case .setMacvtapDown = $0 { return false }
            return true
        }
        return BindingPlan(
            key: key, phase: .migratedAway, reason: actions.isEmpty ? settled : staleReasons.first ?? settled,
            settled: settled, change: actions.isEmpty ? .none : tearsDown ? .destroy : .update, actions: actions,
            lower: lower.name)
    }

    /// Host interface gone: detach whatever backend is left (its fd is dead and QEMU spins on it),
    /// delete owned macvtaps that sit on other lowers, and hold the guest carrier down.
    static func planHostMissing(
        _ binding: NICBinding, backends: [ObservedBackend], owned: [ObservedLink], recordedLink: Bool?,
        missing why: Reason
    ) -> BindingPlan {
        let key = binding.key
        var actions: [Action] = backends.map { .detachBackend(vm: key.vm, backend: $0) }
        actions += owned.map { .deleteMacvtap(ifindex: $0.ifindex, name: $0.name) }
        if recordedLink != false {
            actions.append(.setGuestLink(vm: key.vm, nic: key.nic, up: false))
        }
        let missing = why.message
        var message = missing
        if let backend = backends.first {
            message += "; backend bound to deleted macvtap \(backend.ids.ifindex)"
        }
        let tearsDown = !backends.isEmpty || !owned.isEmpty
        return BindingPlan(
            key: key, phase: .hostMissing, reason: Reason(why.code, message),
            settled: Reason(why.code, missing + "; guest carrier down"),
            change: actions.isEmpty ? .none : (tearsDown ? .destroy : .update), actions: actions)
    }

    /// Why no initialised link matches: nothing matches at all, or udev has not finished with a link
    /// that matches now or may match once udev has named it and set its properties.
    static func describeMissing(_ matcher: HostMatcher, host: ObservedHost) -> Reason {
        let pending = host.uninitializedLinks
        if !pending.filter(matcher.matches).isEmpty {
            return Reason("HostNotInitialized", "host \(matcher) is not yet initialised by udev")
        }
        if !pending.isEmpty {
            let all = pending.map(\.name).sorted()
            // Bounded: a host that just hot-plugged many ports should not get a page-long message.
            var names = all.prefix(4).joined(separator: ", ")
            if all.count > 4 { names += " and \(all.count - 4) more" }
            return Reason(
                "HostNotInitialized", "host \(matcher) does not exist yet; udev has not finished with \(names)")
        }
        if matcher.needsUdev && !host.links.contains(where: { $0.udevProperties != nil }) {
            return Reason(
                "HostMissing", "host \(matcher) does not exist: udev describes no interface here (no udevd runs)")
        }
        return Reason("HostMissing", "host \(matcher) does not exist")
    }

    static func describeStale(_ backend: ObservedBackend, hub: Int, host: ObservedHost) -> Reason {
        let index = backend.ids.ifindex
        guard host.link(ifindex: index) != nil else {
            return Reason("BackendStale", "backend bound to deleted macvtap \(index)")
        }
        if !backend.isComplete {
            return Reason("BackendPartial", "partial backend \(backend.ids.tap) left by an interrupted apply")
        }
        if let onHub = backend.hub, onHub != hub {
            return Reason("BackendWrongHub", "backend on hub \(onHub), the NIC is on hub \(hub)")
        }
        return Reason("BackendStale", "backend bound to replaced macvtap \(index)")
    }

    static func describeStale(
        _ macvtap: ObservedLink, lower: ObservedLink, mode: MacvtapMode, mac: MACAddress, host: ObservedHost
    ) -> Reason {
        if macvtap.lowerIfindex != lower.ifindex {
            let from = macvtap.lowerIfindex.flatMap { host.link(ifindex: $0)?.name } ?? "another interface"
            return Reason("HostChanged", "host changed from \(from) to \(lower.name)")
        }
        if macvtap.macvtapMode != mode {
            let from = macvtap.macvtapMode?.rawValue ?? "unknown"
            return Reason("ModeChanged", "mode changed from \(from) to \(mode.rawValue)")
        }
        if macvtap.mac != mac {
            return Reason("MACChanged", "MAC changed from \(macvtap.mac?.description ?? "none") to \(mac)")
        }
        return Reason("MacvtapDuplicate", "extra macvtap \(macvtap.name) owned by the same binding")
    }

    static func describeLinkChange(recorded: Bool?, up: Bool, lower: ObservedLink) -> Reason {
        switch (recorded, up) {
        case (nil, _):
            return Reason("LinkUnknown", "guest carrier state unknown; setting it \(up ? "up" : "down")")
        case (_, true):
            return Reason("CarrierUp", "host \(lower.name) has carrier; guest carrier up")
        case (_, false):
            return Reason("CarrierDown", "host \(lower.name) has no carrier; guest carrier down")
        }
    }

    // MARK: - Orphans

    /// Owned macvtaps and backends that no desired binding wants. A backend is always detached
    /// before its macvtap is deleted, so QEMU never keeps a dead fd; when the VM does not answer,
    /// the teardown waits rather than leave QEMU spinning.
    static func planOrphans(
        desired: DesiredState, observed: ObservedState, vms: Set<String>?
    ) -> [BindingPlan] {
        var backendsByKey: [BindingKey: [ObservedBackend]] = [:]
        for vm in observed.vms.values where vm.isReachable && vms?.contains(vm.name) ?? true {
            for backend in vm.backends {
                let key = BindingKey(vm: vm.name, nic: backend.ids.nic)
                if desired.binding(key) == nil { backendsByKey[key, default: []].append(backend) }
            }
        }
        let ownedKeys =
            vms.map { names in names.flatMap { observed.host.ownedBindings(vm: $0) } }
            ?? Array(observed.host.ownedBindings)
        let orphanKeys = Set(ownedKeys.filter { desired.binding($0) == nil }).union(backendsByKey.keys)
        return orphanKeys.sorted().map { key in
            let macvtaps = observed.host.ownedMacvtaps(for: key)
            if case .unresponsive(let why) = observed.vms[key.vm]?.reachability {
                return BindingPlan(
                    key: key, isDesired: false, phase: .vmUnreachable,
                    reason: Reason("TeardownWaiting", "binding removed; waiting for VM \(key.vm) to answer: \(why)"),
                    change: .none, actions: [])
            }
            let backends = (backendsByKey[key] ?? []).sorted { $0.ids.ifindex < $1.ids.ifindex }
            let actions =
                backends.map { Action.detachBackend(vm: key.vm, backend: $0) }
                + macvtaps.map { Action.deleteMacvtap(ifindex: $0.ifindex, name: $0.name) }
            return BindingPlan(
                key: key, isDesired: false, phase: .removed,
                reason: Reason("BindingRemoved", "binding is no longer in the desired state"),
                change: .destroy, actions: actions)
        }
    }
}
