import Testing

@testable import MacvtapdCore

/// `ObservedHost` kept current one link at a time (the daemon's link cache) answers every lookup
/// the planner makes as a host indexed afresh from the same links would.
@Suite struct ObservedHostTests {
    private static func macvtap(_ ifindex: Int32, _ vm: String, _ nic: String, lower: Int32, up: Bool = true)
        -> ObservedLink
    {
        ObservedLink(
            ifindex: ifindex, name: "mvt\(vm)\(nic)", kind: "macvtap", adminUp: up, lowerIfindex: lower,
            alias: Ownership.alias(for: BindingKey(vm: vm, nic: nic)), macvtapMode: .bridge)
    }

    /// Every lookup, compared with a host built from the same links.
    private static func expectSameAnswers(_ host: ObservedHost, _ names: [String], _ keys: [BindingKey]) {
        let fresh = ObservedHost(links: host.links.sorted { $0.ifindex < $1.ifindex })
        #expect(Set(host.links) == Set(fresh.links))
        for link in fresh.links { #expect(host.link(ifindex: link.ifindex) == link) }
        for name in names { #expect(host.link(named: name) == fresh.link(named: name), "name \(name)") }
        #expect(host.ownedMacvtaps == fresh.ownedMacvtaps)
        for vm in Set(keys.map(\.vm)) { #expect(host.ownedMacvtaps(vm: vm) == fresh.ownedMacvtaps(vm: vm)) }
    }

    @Test func updatesAndRemovalsKeepTheIndexesAsARebuildWould() {
        let lower = ObservedLink(ifindex: 2, name: "eth0", kind: "veth")
        var host = ObservedHost(links: [lower, Self.macvtap(10, "a", "n0", lower: 2)])
        // A new macvtap, its state changing, a second macvtap of the same binding, a rename.
        host.update(Self.macvtap(11, "a", "n1", lower: 2, up: false))
        host.update(Self.macvtap(11, "a", "n1", lower: 2, up: true))
        host.update(Self.macvtap(12, "a", "n1", lower: 2))
        host.update(Self.macvtap(13, "b", "n0", lower: 2))
        var renamed = lower
        renamed.name = "eth1"
        host.update(renamed)
        let names = ["eth0", "eth1", "mvtan0", "mvtan1", "mvtbn0"]
        let keys = [BindingKey(vm: "a", nic: "n0"), BindingKey(vm: "a", nic: "n1"), BindingKey(vm: "b", nic: "n0")]
        Self.expectSameAnswers(host, names, keys)
        #expect(host.ownedMacvtaps[keys[1]]?.map(\.ifindex) == [11, 12])
        #expect(host.link(named: "eth0") == nil)

        // Removals from the middle and the end; the last of a VM's macvtaps.
        #expect(host.remove(ifindex: 10)?.name == "mvtan0")
        #expect(host.remove(ifindex: 10) == nil)
        host.remove(ifindex: 13)
        Self.expectSameAnswers(host, names, keys)
        #expect(host.ownedMacvtaps(vm: "b").isEmpty)
        #expect(host.ownedMacvtaps[keys[0]] == nil)

        // A link that loses its mark is no longer owned; two links briefly sharing a name.
        var unmarked = Self.macvtap(11, "a", "n1", lower: 2)
        unmarked.alias = nil
        host.update(unmarked)
        host.update(ObservedLink(ifindex: 20, name: "eth1", kind: "veth"))
        #expect(host.link(named: "eth1")?.ifindex == 2)
        host.remove(ifindex: 2)
        #expect(host.link(named: "eth1")?.ifindex == 20)
        Self.expectSameAnswers(host, names, keys)
        #expect(host.ownedMacvtaps[keys[1]]?.map(\.ifindex) == [12])
    }
}
