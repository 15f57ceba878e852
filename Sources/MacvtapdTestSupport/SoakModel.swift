import Foundation
import MacvtapdCore

/// A seeded pseudo-random generator (SplitMix64): the same seed gives the same sequence of soak
/// events on every machine, so a failure found with `--seed S` replays with it.
public struct SoakRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A seed for a run nobody pinned.
    public static func freshSeed() -> UInt64 { UInt64.random(in: 1...UInt64(Int64.max)) }

    public mutating func chance(_ probability: Double) -> Bool { Double.random(in: 0..<1, using: &self) < probability }

    public mutating func pick<T>(_ choices: [T]) -> T { choices[Int.random(in: 0..<choices.count, using: &self)] }
}

/// Every kind of fault the soak injects, named as the report counts them.
public enum SoakEventKind: String, CaseIterable, Sendable, Comparable {
    case lowerDelete = "lower deleted"
    case lowerAdd = "lower re-added"
    case lowerRenameAway = "lower renamed away"
    case lowerRenameBack = "lower renamed back"
    case carrierDown = "carrier down"
    case carrierUp = "carrier up"
    case lowerSwap = "lowers swap names"
    case configAtomic = "config rewritten (atomic rename)"
    case configInPlace = "config rewritten (in place)"
    case configInvalid = "config invalid"
    case sighup = "SIGHUP"
    case qemuKill = "QEMU killed -9"
    case qemuStart = "QEMU (re)started"
    case qemuPause = "QEMU paused (stop)"
    case qemuContinue = "QEMU continued (cont)"
    case daemonKill = "daemon killed -9"
    case daemonTerm = "daemon SIGTERM"
    case daemonStart = "daemon started"
    case netlinkBurst = "link burst while the daemon is stopped (ENOBUFS)"
    case foreignAdd = "foreign macvtap added"
    case foreignDelete = "foreign macvtap deleted"

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// How systemd reads the daemon's notifications during one daemon lifetime.
public enum SoakNotifyMode: String, CaseIterable, Sendable {
    /// No NOTIFY_SOCKET.
    case none
    /// Read every 50 ms.
    case prompt
    /// Read every 3 s: the queue fills between reads.
    case late
    /// Filled before the daemon starts and not read until the soak's round ends.
    case never
}

/// A guest NIC of a soak VM, and the MAC a config may give its macvtap instead of the NIC's own.
public struct SoakNIC: Sendable, Hashable {
    public var vm: String
    public var id: String
    public var mac: MACAddress
    public var alternateMAC: MACAddress
    public var hub: Int

    public init(vm: String, id: String, mac: MACAddress, alternateMAC: MACAddress, hub: Int) {
        self.vm = vm
        self.id = id
        self.mac = mac
        self.alternateMAC = alternateMAC
        self.hub = hub
    }

    public var key: BindingKey { BindingKey(vm: vm, nic: id) }
}

/// The macvtap MAC a binding asks for.
public enum SoakMACChoice: String, Sendable, Hashable, CaseIterable {
    /// The NIC's own (`-device mac=`), the default.
    case nic
    /// An explicit `mac:` other than the NIC's.
    case alternate
    /// `mac: guest`: without a guest driver, the MAC QEMU reports is the NIC's own.
    case guest
}

/// One binding as the soak writes it.
public struct SoakBindingSpec: Sendable, Hashable {
    public var lower: String
    public var mode: MacvtapMode
    public var link: LinkPolicy
    public var mac: SoakMACChoice

    public func macvtapMAC(of nic: SoakNIC) -> MACAddress { mac == .alternate ? nic.alternateMAC : nic.mac }
}

/// A configuration the soak writes: VM → NIC id → binding. A VM present with no NICs is written
/// as `nics: {}`.
public struct SoakConfig: Sendable, Hashable {
    public var vms: [String: [String: SoakBindingSpec]]

    public init(vms: [String: [String: SoakBindingSpec]] = [:]) { self.vms = vms }

    public var bindings: [(key: BindingKey, spec: SoakBindingSpec)] {
        vms.keys.sorted().flatMap { vm in
            vms[vm]!.keys.sorted().map { nic in (BindingKey(vm: vm, nic: nic), vms[vm]![nic]!) }
        }
    }

    public func spec(_ key: BindingKey) -> SoakBindingSpec? { vms[key.vm]?[key.nic] }

    /// The YAML, in the order and form an operator would write it; `qmp` maps a VM to its socket.
    public func yaml(qmp: (String) -> String, nics: [SoakNIC]) -> String {
        var text = "version: 1\nvms:\n"
        if vms.isEmpty { return "version: 1\nvms: {}\n" }
        for vm in vms.keys.sorted() {
            text += "  \(vm):\n    qmp: \(qmp(vm))\n"
            let bindings = vms[vm]!
            if bindings.isEmpty {
                text += "    nics: {}\n"
                continue
            }
            text += "    nics:\n"
            for id in bindings.keys.sorted() {
                let spec = bindings[id]!
                let nic = nics.first { $0.vm == vm && $0.id == id }!
                text += "      \(id):\n        host: \(spec.lower)\n        mode: \(spec.mode.rawValue)\n"
                text += "        link: \(spec.link.rawValue)\n"
                switch spec.mac {
                case .nic: break
                case .alternate: text += "        mac: \"\(nic.alternateMAC)\"\n"
                case .guest: text += "        mac: guest\n"
                }
            }
        }
        return text
    }
}

/// Ways to make a configuration the daemon must reject (and keep the last good one).
public enum SoakInvalidConfig: CaseIterable, Sendable {
    case misspelledMode
    case syntaxError
    case unknownVersion
    case empty
    case duplicateMAC
    case unknownKey

    /// `valid` spoiled in a way the loader must reject.
    public func spoil(_ valid: String) -> String {
        switch self {
        case .misspelledMode:
            if let range = valid.range(of: "mode: ") {
                return valid.replacingCharacters(in: range, with: "mode: brige # ")
            }
            return valid + "defaults:\n  mode: brige\n"
        case .syntaxError: return valid + "  broken: [unclosed\n"
        case .unknownVersion: return valid.replacingOccurrences(of: "version: 1", with: "version: 2")
        case .empty: return ""
        case .duplicateMAC:
            // Two NICs claim one MAC.
            var text = valid.replacingOccurrences(of: "vms: {}\n", with: "vms:\n")
            for vm in ["dupa", "dupb"] {
                text += "  \(vm):\n    qmp: /run/macvtapd-soak-\(vm).qmp\n    nics:\n"
                text += "      nic0:\n        host: up0\n        mac: \"02:00:00:5a:a5:01\"\n"
            }
            return text
        case .unknownKey:
            if let range = valid.range(of: "        host: ") {
                return valid.replacingCharacters(in: range, with: "        hots: ")
            }
            return valid + "vmz: {}\n"
        }
    }
}

/// What the host's interfaces are in the model: each config name is held by one veth (whose peer
/// is `<name>p`), is absent, or its veth is renamed away. `identity` names the veth itself, so a
/// foreign macvtap follows its lower through renames and dies with it.
public struct SoakLower: Sendable, Hashable {
    public enum State: Sendable, Hashable {
        case present
        case absent
        case away(String)
    }
    public var name: String
    public var state: State
    /// The peer is up: the lower has carrier.
    public var peerUp: Bool
    public var identity: Int
}

/// A macvtap someone else made (no macvtapd alias) that the daemon must never touch.
public struct SoakForeign: Sendable, Hashable {
    public var name: String
    public var lowerIdentity: Int
    public var ifindex: Int32
    public var mode: MacvtapMode
    public var mac: MACAddress
}

/// The soak's picture of the world: what it did to the host, the VMs, the config and the daemon,
/// from which the desired end state follows.
public struct SoakModel: Sendable {
    public enum VMState: Sendable { case running, paused, dead }

    public var lowers: [SoakLower]
    public var vmStates: [String: VMState]
    public var foreign: [SoakForeign] = []
    /// The configuration last written that is valid: the desired state once the daemon reads it.
    public var config: SoakConfig
    /// The file on disk is invalid (the daemon keeps, or at a fresh start lacks, a desired state).
    public var diskInvalid = false
    public var daemonRunning = false
    public var nextIdentity: Int
    public let nics: [SoakNIC]

    public init(lowerNames: [String], vms: [String], nics: [SoakNIC], config: SoakConfig) {
        lowers = lowerNames.enumerated().map { SoakLower(name: $1, state: .present, peerUp: true, identity: $0) }
        nextIdentity = lowerNames.count
        vmStates = Dictionary(uniqueKeysWithValues: vms.map { ($0, VMState.running) })
        self.nics = nics
        self.config = config
    }

    public func lower(_ name: String) -> SoakLower { lowers.first { $0.name == name }! }

    public mutating func update(_ name: String, _ change: (inout SoakLower) -> Void) {
        change(&lowers[lowers.firstIndex { $0.name == name }!])
    }

    public func nic(_ key: BindingKey) -> SoakNIC { nics.first { $0.key == key }! }

    /// A random binding.
    public static func randomSpec(lowers: [String], using random: inout SoakRandom) -> SoakBindingSpec {
        // No passthru: it needs its lower to itself, and the foreign macvtaps share the lowers.
        SoakBindingSpec(
            lower: random.pick(lowers), mode: random.pick([.bridge, .vepa, .private]),
            link: random.chance(0.7) ? .follow : .up,
            mac: random.chance(0.7) ? .nic : random.pick([.alternate, .guest]))
    }

    /// Every NIC bound to a random lower.
    public static func randomConfig(nics: [SoakNIC], lowers: [String], using random: inout SoakRandom) -> SoakConfig {
        var config = SoakConfig()
        for nic in nics { config.vms[nic.vm, default: [:]][nic.id] = randomSpec(lowers: lowers, using: &random) }
        return config
    }

    /// The current config with one to three changes an operator might make.
    public func mutatedConfig(using random: inout SoakRandom) -> SoakConfig {
        var next = config
        let names = lowers.map(\.name)
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            let nic = random.pick(nics)
            let vmPresent = next.vms[nic.vm] != nil
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<30:
                if next.vms[nic.vm]?[nic.id] != nil { next.vms[nic.vm]![nic.id]!.lower = random.pick(names) }
            case 30..<45:
                if next.vms[nic.vm]?[nic.id] != nil {
                    next.vms[nic.vm]![nic.id]!.mode = random.pick([.bridge, .vepa, .private])
                }
            case 45..<55:
                if next.vms[nic.vm]?[nic.id] != nil { next.vms[nic.vm]![nic.id]!.link = random.pick([.follow, .up]) }
            case 55..<65:
                if next.vms[nic.vm]?[nic.id] != nil {
                    next.vms[nic.vm]![nic.id]!.mac = random.pick(SoakMACChoice.allCases)
                }
            case 65..<80:
                if vmPresent { next.vms[nic.vm]![nic.id] = nil }
            case 80..<95:
                next.vms[nic.vm, default: [:]][nic.id] = Self.randomSpec(lowers: names, using: &random)
            default:
                if vmPresent && random.chance(0.5) {
                    next.vms[nic.vm] = nil
                } else {
                    for other in nics where other.vm == nic.vm {
                        next.vms[nic.vm, default: [:]][other.id] = Self.randomSpec(lowers: names, using: &random)
                    }
                }
            }
        }
        return next
    }
}
