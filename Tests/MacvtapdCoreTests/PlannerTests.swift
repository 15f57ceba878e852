import Testing

@testable import MacvtapdCore

/// A small world to plan against: one VM `web1` with NIC `nic0` on hub 10, lowers eth0 and eth1.
struct World: Sendable {
    static let key = BindingKey(vm: "web1", nic: "nic0")
    static let guestMAC = MACAddress("52:54:00:12:34:56")!
    static let eth0 = ObservedLink(ifindex: 2, name: "eth0", kind: "veth", mac: MACAddress("02:00:00:00:00:02"))
    static let eth1 = ObservedLink(ifindex: 3, name: "eth1", kind: "veth", mac: MACAddress("02:00:00:00:00:03"))

    var binding = NICBinding(key: World.key, host: .name("eth0"))
    var links: [ObservedLink] = [World.eth0, World.eth1]
    var vm = ObservedVM(
        name: "web1", reachability: .reachable, runState: .running,
        nics: ["nic0": ObservedNIC(id: "nic0", mac: World.guestMAC, hub: 10)])

    var desired: DesiredState {
        DesiredState(vms: ["web1": VMSpec(name: "web1", qmp: "/run/web1.sock", nics: ["nic0": binding])])
    }

    func plan(desired: DesiredState? = nil) -> Plan {
        Planner.plan(
            desired: desired ?? self.desired,
            observed: ObservedState(host: ObservedHost(links: links), vms: ["web1": vm]))
    }

    static func macvtap(
        ifindex: Int32, on lower: ObservedLink, mode: MacvtapMode = .bridge, mac: MACAddress = guestMAC,
        key: BindingKey = World.key, up: Bool = true
    ) -> ObservedLink {
        ObservedLink(
            ifindex: ifindex, name: Ownership.macvtapName(for: key), kind: "macvtap", mac: mac, adminUp: up,
            lowerIfindex: lower.ifindex, alias: Ownership.alias(for: key), macvtapMode: mode)
    }

    static func backend(ifindex: Int32, nic: String = "nic0", tap: Bool = true, port: Bool = true, hub: Int? = 10)
        -> ObservedBackend
    {
        ObservedBackend(ids: .init(nic: nic, ifindex: ifindex), hasTap: tap, hasPort: port, hub: port ? hub : nil)
    }

    /// The converged world: macvtap 42 on eth0, its backend on hub 10, guest link recorded up.
    static var converged: World {
        var world = World()
        world.links.append(macvtap(ifindex: 42, on: eth0))
        world.vm.backends = [backend(ifindex: 42)]
        world.vm.guestLink = ["nic0": true]
        return world
    }
}

/// Compact action names so table rows stay readable.
func shape(_ plan: BindingPlan) -> [String] {
    plan.actions.map { action in
        switch action {
        case .createMacvtap(let spec):
            return "create \(spec.lowerName) \(spec.mode.rawValue) \(spec.mac)\(spec.up ? "" : " down")"
        case .setMacvtapUp(let index, _): return "up \(index)"
        case .setMacvtapDown(let index, _): return "down \(index)"
        case .deleteMacvtap(let index, _): return "delete \(index)"
        case .attachBackend(_, let nic, _, let hub): return "attach \(nic) hub \(hub)"
        case .detachBackend(_, let backend): return "detach \(backend.ids.ifindex)"
        case .setGuestLink(_, _, let up): return "link \(up ? "up" : "down")"
        case .announce: return "announce"
        }
    }
}

struct PlannerCase: CustomTestStringConvertible, Sendable {
    var name: String
    var world: World
    var phase: Phase
    var change: ChangeKind
    var reason: String
    var actions: [String]
    var messageContains: String = ""
    var testDescription: String { name }
}

let plannerCases: [PlannerCase] = {
    var cases: [PlannerCase] = []
    let w = World()

    cases.append(
        PlannerCase(
            name: "fresh binding creates and attaches", world: w, phase: .attached, change: .create,
            reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"],
            messageContains: "host eth0 is present"))

    cases.append(
        PlannerCase(
            name: "converged plans nothing", world: .converged, phase: .attached, change: .none, reason: "Converged",
            actions: [], messageContains: "attached to eth0"))

    var unknownLink = World.converged
    unknownLink.vm.guestLink = [:]
    cases.append(
        PlannerCase(
            name: "unknown guest link is asserted", world: unknownLink, phase: .attached, change: .update,
            reason: "LinkUnknown", actions: ["link up"]))

    var lowerGone = World.converged
    lowerGone.links = [World.eth1]
    cases.append(
        PlannerCase(
            name: "lower deleted detaches dead backend and downs link", world: lowerGone, phase: .hostMissing,
            change: .destroy, reason: "HostMissing", actions: ["detach 42", "link down"],
            messageContains: "backend bound to deleted macvtap 42"))

    var missingSettled = World()
    missingSettled.links = [World.eth1]
    missingSettled.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "lower missing and nothing attached waits", world: missingSettled, phase: .hostMissing,
            change: .none, reason: "HostMissing", actions: []))

    var missingUnknown = missingSettled
    missingUnknown.vm.guestLink = [:]
    cases.append(
        PlannerCase(
            name: "VM started without its host interface gets link down", world: missingUnknown,
            phase: .hostMissing, change: .update, reason: "HostMissing", actions: ["link down"]))

    var lowerBack = World()
    lowerBack.vm.backends = [World.backend(ifindex: 42)]
    lowerBack.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "recreated lower with leftover dead backend is replaced", world: lowerBack, phase: .attached,
            change: .replace, reason: "BackendStale",
            actions: [
                "detach 42", "create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce",
            ],
            messageContains: "deleted macvtap 42"))

    var moved = World.converged
    moved.binding.host = .name("eth1")
    cases.append(
        PlannerCase(
            name: "host changed replaces", world: moved, phase: .attached, change: .replace, reason: "HostChanged",
            actions: [
                "detach 42", "delete 42", "create eth1 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up",
                "announce",
            ],
            messageContains: "host changed from eth0 to eth1"))

    var modeChanged = World.converged
    modeChanged.binding.mode = .vepa
    cases.append(
        PlannerCase(
            name: "mode changed replaces", world: modeChanged, phase: .attached, change: .replace,
            reason: "ModeChanged",
            actions: [
                "detach 42", "delete 42", "create eth0 vepa 52:54:00:12:34:56", "attach nic0 hub 10", "link up",
                "announce",
            ]
        ))

    var macChanged = World.converged
    macChanged.binding.mac = MACAddress("52:54:00:aa:bb:cc")
    cases.append(
        PlannerCase(
            name: "MAC changed replaces", world: macChanged, phase: .attached, change: .replace,
            reason: "MACChanged",
            actions: [
                "detach 42", "delete 42", "create eth0 bridge 52:54:00:aa:bb:cc", "attach nic0 hub 10", "link up",
                "announce",
            ]
        ))

    var noCarrier = World.converged
    noCarrier.links[0].carrier = false
    cases.append(
        PlannerCase(
            name: "follow: lower without carrier downs the guest link", world: noCarrier, phase: .noCarrier,
            change: .update, reason: "CarrierDown", actions: ["link down"]))

    var noCarrierUp = noCarrier
    noCarrierUp.binding.link = .up
    cases.append(
        PlannerCase(
            name: "link up: carrier ignored", world: noCarrierUp, phase: .attached, change: .none,
            reason: "Converged", actions: []))

    var carrierBack = World.converged
    carrierBack.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "carrier back raises the guest link", world: carrierBack, phase: .attached, change: .update,
            reason: "CarrierUp", actions: ["link up", "announce"]))

    var carrierBackQuiet = carrierBack
    carrierBackQuiet.binding.announce = false
    cases.append(
        PlannerCase(
            name: "announce: false raises the link without announcing", world: carrierBackQuiet, phase: .attached,
            change: .update, reason: "CarrierUp", actions: ["link up"]))

    var returnsQuiet = World()
    returnsQuiet.binding.announce = false
    returnsQuiet.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "announce: false attaches without announcing", world: returnsQuiet, phase: .attached,
            change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up"]))

    var returnsWithoutCarrier = World()
    returnsWithoutCarrier.links[0].carrier = false
    returnsWithoutCarrier.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "attach onto a lower without carrier announces nothing (the guest link stays down)",
            world: returnsWithoutCarrier, phase: .noCarrier, change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link down"]))

    var returnsWithoutCarrierHeld = returnsWithoutCarrier
    returnsWithoutCarrierHeld.vm.guestLinkHeld = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "attach onto a lower without carrier sends no set_link when this session already set it down",
            world: returnsWithoutCarrierHeld, phase: .noCarrier, change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10"]))

    var returnsWithCarrierHeldDown = returnsWithoutCarrierHeld
    returnsWithCarrierHeldDown.links[0].carrier = true
    cases.append(
        PlannerCase(
            name: "attach onto a lower with carrier raises a guest link held down",
            world: returnsWithCarrierHeldDown, phase: .attached, change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var heldButRecordedUnknown = returnsWithoutCarrierHeld
    heldButRecordedUnknown.vm.guestLink = [:]
    cases.append(
        PlannerCase(
            name: "a held link without a record is set again", world: heldButRecordedUnknown, phase: .noCarrier,
            change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link down"]))

    var returnsWithoutCarrierUp = returnsWithoutCarrier
    returnsWithoutCarrierUp.binding.link = .up
    cases.append(
        PlannerCase(
            name: "link up: attach onto a lower without carrier raises the link and announces",
            world: returnsWithoutCarrierUp, phase: .attached, change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var guestChangedMAC = World.converged
    guestChangedMAC.vm.nics["nic0"] = ObservedNIC(
        id: "nic0", mac: MACAddress("52:54:00:aa:bb:cc"), hub: 10, deviceMAC: World.guestMAC,
        guestMAC: MACAddress("52:54:00:aa:bb:cc"))
    cases.append(
        PlannerCase(
            name: "default MAC: the guest's own choice does not move the macvtap", world: guestChangedMAC,
            phase: .attached, change: .none, reason: "Converged", actions: []))

    var followsGuest = guestChangedMAC
    followsGuest.binding.followsGuestMAC = true
    cases.append(
        PlannerCase(
            name: "mac: guest: the macvtap follows the MAC the guest set", world: followsGuest, phase: .attached,
            change: .replace, reason: "MACChanged",
            actions: [
                "detach 42", "delete 42", "create eth0 bridge 52:54:00:aa:bb:cc", "attach nic0 hub 10", "link up",
                "announce",
            ], messageContains: "MAC changed from 52:54:00:12:34:56 to 52:54:00:aa:bb:cc"))

    var partialTap = World()
    partialTap.links.append(World.macvtap(ifindex: 42, on: World.eth0))
    partialTap.vm.backends = [World.backend(ifindex: 42, port: false)]
    partialTap.vm.guestLink = ["nic0": true]
    cases.append(
        PlannerCase(
            name: "interrupted apply: tap without port is redone", world: partialTap, phase: .attached,
            change: .replace, reason: "BackendPartial",
            actions: ["detach 42", "attach nic0 hub 10", "link up", "announce"]))

    var macvtapOnly = World()
    macvtapOnly.links.append(World.macvtap(ifindex: 42, on: World.eth0))
    cases.append(
        PlannerCase(
            name: "interrupted apply: macvtap without backend is attached, not duplicated", world: macvtapOnly,
            phase: .attached, change: .create, reason: "HostPresent",
            actions: ["attach nic0 hub 10", "link up", "announce"]))

    var downedMacvtap = World.converged
    downedMacvtap.links[2].adminUp = false
    cases.append(
        PlannerCase(
            name: "owned macvtap set down is brought up and announced", world: downedMacvtap, phase: .attached,
            change: .update, reason: "VMRunsHere", actions: ["up 42", "announce"]))

    var wrongHub = World.converged
    wrongHub.vm.backends = [World.backend(ifindex: 42, hub: 11)]
    cases.append(
        PlannerCase(
            name: "backend on the wrong hub is moved", world: wrongHub, phase: .attached, change: .replace,
            reason: "BackendWrongHub", actions: ["detach 42", "attach nic0 hub 10", "link up", "announce"]))

    var unreachable = World.converged
    unreachable.links = [World.eth1]
    unreachable.vm = ObservedVM(name: "web1", reachability: .unresponsive("timed out"))
    cases.append(
        PlannerCase(
            name: "unreachable VM waits, nothing torn down", world: unreachable, phase: .vmUnreachable,
            change: .none, reason: "VMUnresponsive", actions: []))

    var absent = World()
    absent.vm = .absent("web1", "no such file")
    cases.append(
        PlannerCase(
            name: "VM not running here waits with nothing", world: absent, phase: .vmNotRunning, change: .none,
            reason: "VMNotRunning", actions: [], messageContains: "not running on this host"))

    var exited = World.converged
    exited.vm = .absent("web1", "connection refused")
    cases.append(
        PlannerCase(
            name: "QEMU gone: its macvtap is deleted", world: exited, phase: .vmNotRunning, change: .destroy,
            reason: "VMNotRunning", actions: ["delete 42"], messageContains: "its macvtap goes"))

    // MARK: Run states

    var prelaunch = World()
    prelaunch.vm.runState = .prelaunch
    cases.append(
        PlannerCase(
            name: "prelaunch attaches before the guest first runs", world: prelaunch, phase: .attached,
            change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var paused = World.converged
    paused.vm.runState = .paused
    cases.append(
        PlannerCase(
            name: "paused by the user: nothing changes", world: paused, phase: .attached, change: .none,
            reason: "Converged", actions: []))

    var incoming = World()
    incoming.vm.runState = .inmigrate
    cases.append(
        PlannerCase(
            name: "migration destination: attached on a macvtap created down, no link, no announce",
            world: incoming, phase: .migrating, change: .create, reason: "MigrationIncoming",
            actions: ["create eth0 bridge 52:54:00:12:34:56 down", "attach nic0 hub 10"],
            messageContains: "held down until the VM runs here"))

    var incomingReady = World()
    incomingReady.links.append(World.macvtap(ifindex: 42, on: World.eth0, up: false))
    incomingReady.vm.backends = [World.backend(ifindex: 42)]
    incomingReady.vm.runState = .inmigrate
    cases.append(
        PlannerCase(
            name: "migration destination ready: nothing to do", world: incomingReady, phase: .migrating,
            change: .none, reason: "MigrationIncoming", actions: []))

    var incomingUp = incomingReady
    incomingUp.links[2].adminUp = true
    cases.append(
        PlannerCase(
            name: "migration destination with an up macvtap takes it down", world: incomingUp, phase: .migrating,
            change: .update, reason: "MigrationIncoming", actions: ["down 42"]))

    var incomingHostMissing = World()
    incomingHostMissing.links = [World.eth1]
    incomingHostMissing.vm.runState = .inmigrate
    cases.append(
        PlannerCase(
            name: "migration destination without its host interface sets no link", world: incomingHostMissing,
            phase: .hostMissing, change: .none, reason: "HostMissing", actions: []))

    var handedOver = incomingReady
    handedOver.vm.runState = .running
    cases.append(
        PlannerCase(
            name: "handover: the macvtap comes up first, then carrier and announce", world: handedOver,
            phase: .attached, change: .update, reason: "VMRunsHere", actions: ["up 42", "link up", "announce"]))

    var handedOverQuiet = handedOver
    handedOverQuiet.binding.announce = false
    cases.append(
        PlannerCase(
            name: "handover without announce", world: handedOverQuiet, phase: .attached, change: .update,
            reason: "VMRunsHere", actions: ["up 42", "link up"]))

    for state in [RunState.finishMigrate, .postmigrate] {
        var departing = World.converged
        departing.vm.runState = state
        cases.append(
            PlannerCase(
                name: "migration source in \(state): macvtap down, backend kept", world: departing,
                phase: .migratedAway, change: .update, reason: "MigratedAway", actions: ["down 42"],
                messageContains: "held down until QEMU exits"))
    }

    var departed = World.converged
    departed.links[2].adminUp = false
    departed.vm.runState = .postmigrate
    cases.append(
        PlannerCase(
            name: "migration source after handover: nothing more", world: departed, phase: .migratedAway,
            change: .none, reason: "MigratedAway", actions: []))

    var departedNothing = World()
    departedNothing.vm.runState = .postmigrate
    cases.append(
        PlannerCase(
            name: "migration source without a backend creates nothing", world: departedNothing,
            phase: .migratedAway, change: .none, reason: "MigratedAway", actions: []))

    var resumedSource = departed
    resumedSource.vm.runState = .running
    cases.append(
        PlannerCase(
            name: "failed migration resumes the source: macvtap up again", world: resumedSource, phase: .attached,
            change: .update, reason: "VMRunsHere", actions: ["up 42", "announce"]))

    var shutdownGuest = World.converged
    shutdownGuest.vm.runState = .shutdown
    cases.append(
        PlannerCase(
            name: "guest powered off, QEMU still there: backends stay", world: shutdownGuest, phase: .attached,
            change: .none, reason: "Converged", actions: []))

    var noNIC = World()
    noNIC.vm.nics = [:]
    cases.append(
        PlannerCase(
            name: "missing NIC waits", world: noNIC, phase: .nicMissing, change: .none, reason: "NICMissing",
            actions: []))

    var offHub = World()
    offHub.vm.nics["nic0"]?.hub = nil
    cases.append(
        PlannerCase(
            name: "NIC not on a hub waits", world: offHub, phase: .nicMissing, change: .none, reason: "NICNotOnHub",
            actions: []))

    var explicitHub = offHub
    explicitHub.binding.hub = 7
    cases.append(
        PlannerCase(
            name: "explicit hub overrides discovery", world: explicitHub, phase: .attached, change: .create,
            reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 7", "link up", "announce"]))

    var byMAC = World()
    byMAC.binding.host = .mac(MACAddress("02:00:00:00:00:03")!)
    cases.append(
        PlannerCase(
            name: "host matched by MAC", world: byMAC, phase: .attached, change: .create, reason: "HostPresent",
            actions: ["create eth1 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var byPermanentMAC = World()
    byPermanentMAC.links[1].mac = MACAddress("02:99:00:00:00:03")
    byPermanentMAC.links[1].permanentMAC = MACAddress("02:00:00:00:00:03")
    byPermanentMAC.binding.host = .mac(MACAddress("02:00:00:00:00:03")!)
    cases.append(
        PlannerCase(
            name: "host matched by permanent MAC", world: byPermanentMAC, phase: .attached, change: .create,
            reason: "HostPresent",
            actions: ["create eth1 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var ambiguous = World()
    ambiguous.links[1].mac = World.eth0.mac
    ambiguous.binding.host = .mac(World.eth0.mac!)
    cases.append(
        PlannerCase(
            name: "two interfaces with the MAC: no guess", world: ambiguous, phase: .hostAmbiguous, change: .none,
            reason: "HostAmbiguous", actions: [], messageContains: "eth0, eth1"))

    // udev identity: eth1 sits at PCI 0000:03:00.0 and udev named it by path.
    let eth1Udev = ["ID_PATH": "pci-0000:03:00.0", "ID_NET_NAME_PATH": "enp3s0", "INTERFACE": "eth1"]
    let createOnEth1 = ["create eth1 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]

    var byPath = World()
    byPath.links[0].udevProperties = ["ID_PATH": "pci-0000:00:1f.6"]
    byPath.links[1].udevProperties = eth1Udev
    byPath.binding.host = .path("pci-0000:03:00.0")
    cases.append(
        PlannerCase(
            name: "host matched by udev path", world: byPath, phase: .attached, change: .create,
            reason: "HostPresent", actions: createOnEth1))

    var byProperties = byPath
    byProperties.binding.host = .property(["ID_NET_NAME_PATH": "enp3s0", "ID_PATH": "pci-0000:03:00.0"])
    cases.append(
        PlannerCase(
            name: "host matched by every udev property", world: byProperties, phase: .attached, change: .create,
            reason: "HostPresent", actions: createOnEth1))

    var onePropertyDiffers = byPath
    onePropertyDiffers.binding.host = .property(["ID_NET_NAME_PATH": "enp3s0", "ID_PATH": "pci-0000:04:00.0"])
    onePropertyDiffers.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "one udev property differs: no match", world: onePropertyDiffers, phase: .hostMissing,
            change: .none, reason: "HostMissing", actions: [],
            messageContains: "host property ID_NET_NAME_PATH=enp3s0,ID_PATH=pci-0000:04:00.0 does not exist"))

    var pathAmbiguous = byPath
    pathAmbiguous.links[0].udevProperties = eth1Udev
    cases.append(
        PlannerCase(
            name: "two interfaces at one udev path: no guess", world: pathAmbiguous, phase: .hostAmbiguous,
            change: .none, reason: "HostAmbiguous", actions: [], messageContains: "eth0, eth1"))

    var pathWithoutUdev = World()
    pathWithoutUdev.binding.host = .path("pci-0000:03:00.0")
    pathWithoutUdev.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "udev path without udev information", world: pathWithoutUdev, phase: .hostMissing,
            change: .none, reason: "HostMissing", actions: [], messageContains: "udev describes no interface here"))

    var macvtapCopiesPath = byPath
    macvtapCopiesPath.links[1].udevProperties = nil
    macvtapCopiesPath.links.append(
        ObservedLink(ifindex: 60, name: "macvtap9", kind: "macvtap", lowerIfindex: 2, udevProperties: eth1Udev))
    macvtapCopiesPath.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "a macvtap is never a lower by udev identity", world: macvtapCopiesPath, phase: .hostMissing,
            change: .none, reason: "HostMissing", actions: []))

    var notInitialized = World()
    notInitialized.links[0].udevInitialized = false
    notInitialized.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "lower not yet initialised by udev waits", world: notInitialized, phase: .hostMissing,
            change: .none, reason: "HostNotInitialized", actions: [],
            messageContains: "host eth0 is not yet initialised by udev"))

    // eth0 was unplugged (taking macvtap 42 with it) and is back as a new link udev is working on.
    var backNotInitialized = World.converged
    backNotInitialized.links = [
        ObservedLink(ifindex: 7, name: "eth0", kind: "veth", mac: World.eth0.mac, udevInitialized: false), World.eth1,
    ]
    cases.append(
        PlannerCase(
            name: "lower back but not yet initialised: dead backend detached, no new one",
            world: backNotInitialized, phase: .hostMissing, change: .destroy, reason: "HostNotInitialized",
            actions: ["detach 42", "link down"], messageContains: "host eth0 is not yet initialised by udev"))

    var entryLost = World.converged
    entryLost.links[0].udevInitialized = false
    cases.append(
        PlannerCase(
            name: "a lower that carries our macvtap keeps it when its udev entry goes", world: entryLost,
            phase: .attached, change: .none, reason: "Converged", actions: []))

    var renamePending = World()
    renamePending.binding.host = .name("enp3s0")
    renamePending.links[1].udevInitialized = false
    renamePending.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "host missing while udev may still rename a link", world: renamePending, phase: .hostMissing,
            change: .none, reason: "HostNotInitialized", actions: [],
            messageContains: "host enp3s0 does not exist yet; udev has not finished with eth1"))

    var manyPending = World()
    manyPending.binding.host = .name("enp3s0")
    manyPending.vm.guestLink = ["nic0": false]
    manyPending.links = (10..<16).map { ObservedLink(ifindex: $0, name: "eth\($0)", udevInitialized: false) }
    cases.append(
        PlannerCase(
            name: "many links udev has not finished with are named briefly", world: manyPending, phase: .hostMissing,
            change: .none, reason: "HostNotInitialized", actions: [],
            messageContains: "udev has not finished with eth10, eth11, eth12, eth13 and 2 more"))

    var pathPending = byPath
    pathPending.links[1].udevInitialized = false
    pathPending.links[1].udevProperties = ["INTERFACE": "eth1"]
    pathPending.vm.guestLink = ["nic0": false]
    cases.append(
        PlannerCase(
            name: "udev path of a link udev has not finished with waits", world: pathPending, phase: .hostMissing,
            change: .none, reason: "HostNotInitialized", actions: [], messageContains: "udev has not finished with eth1"
        ))

    var otherPending = byPath
    otherPending.links[0].udevInitialized = false
    cases.append(
        PlannerCase(
            name: "another link udev is still naming does not hold up a match", world: otherPending,
            phase: .attached, change: .create, reason: "HostPresent", actions: createOnEth1))

    var macPendingTwin = World()
    macPendingTwin.binding.host = .mac(World.eth0.mac!)
    macPendingTwin.links[1].mac = World.eth0.mac
    macPendingTwin.links[1].udevInitialized = false
    cases.append(
        PlannerCase(
            name: "a twin MAC on a link udev has not finished with is not there yet", world: macPendingTwin,
            phase: .attached, change: .create, reason: "HostPresent",
            actions: ["create eth0 bridge 52:54:00:12:34:56", "attach nic0 hub 10", "link up", "announce"]))

    var squatted = World()
    squatted.links.append(
        ObservedLink(ifindex: 50, name: Ownership.macvtapName(for: World.key), kind: "macvtap", lowerIfindex: 2))
    cases.append(
        PlannerCase(
            name: "foreign interface with our name is a conflict", world: squatted, phase: .conflict,
            change: .none, reason: "NameTaken", actions: []))

    var nicMACDefault = World()
    nicMACDefault.vm.nics["nic0"]?.mac = nil
    cases.append(
        PlannerCase(
            name: "unknown NIC MAC without config MAC waits", world: nicMACDefault, phase: .nicMissing,
            change: .none, reason: "MACUnknown", actions: []))

    return cases
}()

@Suite struct PlannerTests {
    @Test(arguments: plannerCases)
    func plansBinding(_ row: PlannerCase) throws {
        let plan = row.world.plan()
        let binding = try #require(plan.bindings.first { $0.key == World.key })
        #expect(binding.phase == row.phase)
        #expect(binding.change == row.change)
        #expect(binding.reason.code == row.reason)
        #expect(shape(binding) == row.actions)
        #expect(binding.reason.message.contains(row.messageContains), "\(binding.reason.message)")
        #expect(plan.bindings.count == 1, "no orphans expected")
    }

    @Test func convergedWorldHasNoChanges() {
        #expect(!World.converged.plan().hasChanges)
    }

    @Test func removedBindingTearsDownOnlyItsBackend() throws {
        var world = World.converged
        let other = BindingKey(vm: "web1", nic: "nic1")
        world.vm.nics["nic1"] = ObservedNIC(id: "nic1", mac: MACAddress("52:54:00:00:00:01"), hub: 11)
        world.links.append(
            World.macvtap(ifindex: 43, on: World.eth1, mac: MACAddress("52:54:00:00:00:01")!, key: other))
        world.vm.backends.append(World.backend(ifindex: 43, nic: "nic1", hub: 11))
        let plan = world.plan()
        #expect(plan.bindings.map(\.key) == [World.key, other])
        let orphan = try #require(plan.bindings.last)
        #expect(!orphan.isDesired)
        #expect(orphan.phase == .removed)
        #expect(orphan.change == .destroy)
        #expect(shape(orphan) == ["detach 43", "delete 43"])
        #expect(plan.bindings[0].actions.isEmpty, "the remaining binding is untouched")
    }

    @Test func orphanOfUnresponsiveVMWaits() throws {
        var world = World()
        world.links.append(World.macvtap(ifindex: 42, on: World.eth0))
        world.vm = ObservedVM(name: "web1", reachability: .unresponsive("timed out"))
        let plan = world.plan(desired: DesiredState())
        let orphan = try #require(plan.bindings.first)
        #expect(orphan.actions.isEmpty)
        #expect(orphan.reason.code == "TeardownWaiting")
    }

    @Test func orphanOfAbsentVMIsDeleted() throws {
        var world = World()
        world.links.append(World.macvtap(ifindex: 42, on: World.eth0))
        world.vm = .absent("web1", "refused")
        let plan = world.plan(desired: DesiredState())
        #expect(shape(try #require(plan.bindings.first)) == ["delete 42"])
    }

    @Test func unownedMacvtapsAreNeverTouched() {
        var world = World.converged
        world.links.append(
            ObservedLink(ifindex: 60, name: "macvtap9", kind: "macvtap", lowerIfindex: 2, alias: "someone else"))
        world.vm.backends.append(
            ObservedBackend(ids: .init(nic: "nic0", ifindex: 42), hasTap: true, hasPort: true, hub: 10))
        let plan = world.plan(desired: DesiredState())
        let touched = plan.bindings.flatMap(\.actions).compactMap { action -> Int32? in
            if case .deleteMacvtap(let index, _) = action { return index }
            return nil
        }
        #expect(touched == [42])
    }

    @Test func planScopedToAVMLeavesOtherVMsAlone() {
        var world = World.converged
        let other = BindingKey(vm: "db1", nic: "nic0")
        world.links.append(
            World.macvtap(ifindex: 43, on: World.eth1, mac: MACAddress("52:54:00:00:00:09")!, key: other))
        let observed = ObservedState(host: ObservedHost(links: world.links), vms: ["web1": world.vm])
        let scoped = Planner.plan(desired: world.desired, observed: observed, vms: ["web1"])
        #expect(scoped.bindings.map(\.key) == [World.key], "db1's macvtap is not an orphan of web1's plan")
        let whole = Planner.plan(desired: world.desired, observed: observed)
        #expect(
            whole.bindings.map(\.key) == [World.key, other], "unscoped, it is an orphan (listed after the desired)")
    }

    @Test func planIsDeterministic() {
        let world = World()
        #expect(world.plan() == world.plan())
    }
}
