import MacvtapdCore

/// Which VMs' bindings a link may be the host of, looked up rather than scanned: a converge or a
/// flap brings thousands of link events, and matching each against every binding cost a fifth of
/// the daemon's CPU. Name matchers (the usual kind) are a dictionary lookup; the other matchers
/// (MAC, udev path or properties) are few and never match a macvtap or macvlan.
struct BindingIndex {
    private var byName: [String: Set<String>] = [:]
    private var others: [(vm: String, host: HostMatcher)] = []
    /// Every VM with a binding.
    private(set) var vms: Set<String> = []

    init(_ bindings: [NICBinding] = []) {
        for binding in bindings {
            vms.insert(binding.key.vm)
            if case .name(let name) = binding.host {
                byName[name, default: []].insert(binding.key.vm)
            } else {
                others.append((binding.key.vm, binding.host))
            }
        }
    }

    /// The VMs with a binding whose host matcher selects `link`.
    func vms(matching link: ObservedLink) -> Set<String> {
        var found = byName[link.name] ?? []
        guard link.kind != "macvtap" && link.kind != "macvlan" else { return found }
        for (vm, host) in others where !found.contains(vm) && host.matches(link) { found.insert(vm) }
        return found
    }
}
