import MacvtapdCore
import Testing

@testable import MacvtapdReconciler

/// The link cache keeps its links in one array with their places by ifindex (the planner's
/// snapshot shares that array): whatever events, dumps and executor outcomes did to it, the
/// planner must see the same host as one built from the links the kernel has.
@Suite struct LinkCacheTests {
    static func lower(_ index: Int32, _ name: String) -> ObservedLink {
        ObservedLink(ifindex: index, name: name, kind: "veth")
    }

    static func macvtap(_ index: Int32, _ vm: String, _ nic: String, lower: Int32) -> ObservedLink {
        ObservedLink(
            ifindex: index, name: "mvt\(index)", kind: "macvtap", lowerIfindex: lower,
            alias: Ownership.alias(for: BindingKey(vm: vm, nic: nic)), macvtapMode: .bridge)
    }

    /// What the planner reads of a host, in a form that does not depend on the links' order.
    static func view(_ host: ObservedHost) -> [String] {
        var lines = host.links.sorted { $0.ifindex < $1.ifindex }.map { link in
            "\(link.ifindex) \(link.name) up=\(link.adminUp) alias=\(link.alias ?? "-")"
                + " byIndex=\(host.link(ifindex: link.ifindex) == link) byName=\(host.link(named: link.name) == link)"
        }
        for (key, links) in host.ownedMacvtaps.sorted(by: { $0.key < $1.key }) {
            lines.append("owned \(key): \(links.map(\.ifindex)) = \(host.ownedMacvtaps(for: key).map(\.ifindex))")
        }
        for vm in Set(host.ownedMacvtaps.keys.map(\.vm)).sorted() {
            let byVM = host.ownedMacvtaps(vm: vm)
            lines.append("vm \(vm): \(byVM.keys.sorted().map { "\($0)=\(byVM[$0]!.map(\.ifindex))" })")
        }
        return lines
    }

    enum Step {
        case dump([ObservedLink])
        case event(LinkChange)
        case created(ObservedLink)
        case deleted(Int32)
        case admin(Int32, Bool)
    }

    static let eth0 = lower(2, "eth0")
    static let eth1 = lower(3, "eth1")

    /// Each row: steps, then the links the cache must hold.
    static let rows: [(name: String, steps: [Step], expected: [ObservedLink])] = {
        let a0 = macvtap(10, "a", "n0", lower: 2)
        let a1 = macvtap(11, "a", "n1", lower: 2)
        let b0 = macvtap(12, "b", "n0", lower: 3)
        let b0Again = macvtap(13, "b", "n0", lower: 3)
        var a1Down = a1
        a1Down.adminUp = false
        var unmarked = macvtap(14, "c", "n0", lower: 2)
        unmarked.alias = nil
        return [
            ("a dump", [.dump([eth0, eth1, a0, a1, b0])], [eth0, eth1, a0, a1, b0]),
            (
                "a link in the middle removed, one added",
                [.dump([eth0, eth1, a0, a1, b0]), .event(.removed(a0)), .event(.updated(b0Again))],
                [eth0, eth1, a1, b0, b0Again]
            ),
            ("the last link removed", [.dump([eth0, a0]), .event(.removed(a0))], [eth0]),
            (
                "every link removed, then one back", [.dump([eth0]), .event(.removed(eth0)), .event(.updated(eth1))],
                [eth1]
            ),
            (
                "a removed link's late update is ignored",
                [.dump([eth0, a0]), .event(.removed(a0)), .event(.updated(a0))], [eth0]
            ),
            (
                "executor outcomes",
                [.dump([eth0, eth1, a0]), .created(a1), .deleted(10), .admin(11, false), .created(b0)],
                [eth0, eth1, a1Down, b0]
            ),
            (
                "an announcement without the mark keeps it",
                [.dump([eth0]), .created(macvtap(14, "c", "n0", lower: 2)), .event(.updated(unmarked))],
                [eth0, macvtap(14, "c", "n0", lower: 2)]
            ),
            (
                "a dump replaces everything", [.dump([eth0, a0, a1]), .event(.updated(b0)), .dump([eth1, b0])],
                [eth1, b0]
            ),
        ]
    }()

    @Test(arguments: rows.indices) func theCacheAnswersAsTheLinksItHolds(row: Int) {
        let (name, steps, expected) = Self.rows[row]
        var cache = LinkCache()
        for step in steps {
            _ = cache.host()  // a snapshot taken between changes must not be changed by them
            switch step {
            case .dump(let links): cache.replace(with: links)
            case .event(let change): _ = cache.apply(change)
            case .created(let link):
                var outcome = BindingOutcome(plan: Self.plan)
                outcome.createdLinks = [link]
                cache.follow(outcome)
            case .deleted(let index):
                var outcome = BindingOutcome(plan: Self.plan)
                outcome.deletedLinks = [index]
                cache.follow(outcome)
            case .admin(let index, let up):
                var outcome = BindingOutcome(plan: Self.plan)
                outcome.adminChanges = [(index, up)]
                cache.follow(outcome)
            }
        }
        #expect(Self.view(cache.host()) == Self.view(ObservedHost(links: expected)), "\(name)")
        #expect(cache.owningVMs == Set(expected.compactMap { $0.owner?.vm }), "\(name)")
    }

    static let plan = BindingPlan(
        key: BindingKey(vm: "a", nic: "n0"), phase: .attached, reason: Reason("Converged", ""), change: .none,
        actions: [])

    /// A snapshot the planner holds is a value: later changes to the cache do not reach it.
    @Test func aSnapshotStaysAsItWasTaken() {
        var cache = LinkCache()
        cache.replace(with: [Self.eth0, Self.eth1])
        let before = cache.host()
        _ = cache.apply(.removed(Self.eth0))
        #expect(before.links.map(\.ifindex).sorted() == [2, 3])
        #expect(cache.host().links.map(\.ifindex) == [3])
    }
}
