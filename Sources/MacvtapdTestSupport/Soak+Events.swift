import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The soak's faults: what each event does to the world.
extension Soak {
    /// One random fault among those that make sense now, weighted.
    func step() async throws {
        var choices: [(weight: Double, kind: SoakEventKind)] = []
        let present = model.lowers.filter { $0.state == .present }
        func add(_ weight: Double, _ kind: SoakEventKind, when condition: Bool = true) {
            if condition { choices.append((weight, kind)) }
        }
        add(8, .lowerDelete, when: !present.isEmpty)
        add(12, .lowerAdd, when: model.lowers.contains { $0.state == .absent })
        add(4, .lowerRenameAway, when: !present.isEmpty)
        add(8, .lowerRenameBack, when: model.lowers.contains { if case .away = $0.state { true } else { false } })
        add(6, .carrierDown, when: present.contains { $0.peerUp })
        add(8, .carrierUp, when: present.contains { !$0.peerUp })
        add(3, .lowerSwap, when: present.count >= 2)
        add(6, .configAtomic)
        add(4, .configInPlace)
        add(3, .configInvalid)
        // As systemd's ExecReload= runs only once the daemon is ready (READY=1): a SIGHUP before the
        // daemon listens for it ends it by the default action, as it would any process.
        add(3, .sighup, when: model.daemonRunning && daemonListens())
        add(1.5, .qemuKill, when: model.vmStates.values.contains { $0 != .dead })
        add(10, .qemuStart, when: model.vmStates.values.contains { $0 == .dead })
        add(2, .qemuPause, when: model.vmStates.values.contains { $0 == .running })
        add(6, .qemuContinue, when: model.vmStates.values.contains { $0 == .paused })
        add(1, .daemonKill, when: model.daemonRunning)
        add(1, .daemonTerm, when: model.daemonRunning)
        add(25, .daemonStart, when: !model.daemonRunning)
        add(1, .netlinkBurst, when: model.daemonRunning)
        add(2, .foreignAdd, when: model.foreign.count < 2 && !present.isEmpty)
        add(1, .foreignDelete, when: !model.foreign.isEmpty)
        let total = choices.reduce(0) { $0 + $1.weight }
        var roll = Double.random(in: 0..<total, using: &random)
        var kind = choices.last!.kind
        for choice in choices {
            if roll < choice.weight {
                kind = choice.kind
                break
            }
            roll -= choice.weight
        }
        try await perform(kind)
    }

    func perform(_ kind: SoakEventKind) async throws {
        let present = model.lowers.filter { $0.state == .present }.map(\.name)
        switch kind {
        case .lowerDelete:
            let name = random.pick(present)
            try await deleteLower(name)
            record(kind, name)
        case .lowerAdd:
            let name = random.pick(model.lowers.filter { $0.state == .absent }.map(\.name))
            try await addLower(name)
            record(kind, name)
        case .lowerRenameAway:
            let name = random.pick(present)
            try await sh("ip link set \(name) down && ip link set \(name) name aw\(name)")
            model.update(name) { $0.state = .away("aw\(name)") }
            record(kind, "\(name) → aw\(name)")
        case .lowerRenameBack:
            let away = model.lowers.compactMap { lower -> (String, String)? in
                if case .away(let other) = lower.state { return (lower.name, other) }
                return nil
            }
            let (name, other) = random.pick(away)
            try await renameBack(name, from: other)
            record(kind, "\(other) → \(name)")
        case .carrierDown:
            let name = random.pick(model.lowers.filter { $0.state == .present && $0.peerUp }.map(\.name))
            try await sh("ip link set \(name)p down")
            model.update(name) { $0.peerUp = false }
            record(kind, name)
        case .carrierUp:
            let name = random.pick(model.lowers.filter { $0.state == .present && !$0.peerUp }.map(\.name))
            try await sh("ip link set \(name)p up")
            model.update(name) { $0.peerUp = true }
            record(kind, name)
        case .lowerSwap:
            var names = present
            let first = names.remove(at: Int.random(in: 0..<names.count, using: &random))
            let second = random.pick(names)
            try await swap(first, second)
            record(kind, "\(first) ⇄ \(second)")
        case .configAtomic, .configInPlace:
            let next = model.mutatedConfig(using: &random)
            try writeConfig(next, atomic: kind == .configAtomic)
            record(kind, describe(next))
        case .configInvalid:
            let spoiler = random.pick(SoakInvalidConfig.allCases)
            let atomic = random.chance(0.5)
            try writeText(spoiler.spoil(yaml(model.config)), atomic: atomic)
            model.diskInvalid = true
            record(kind, "\(spoiler)\(atomic ? ", atomic" : ", in place")")
        case .sighup:
            guard let daemon else { return }
            kill(daemon.pid, SIGHUP)
            record(kind)
        case .qemuKill:
            let name = random.pick(model.vmStates.filter { $0.value != .dead }.keys.sorted())
            await vm(name).kill()
            model.vmStates[name] = .dead
            record(kind, name)
        case .qemuStart:
            let name = random.pick(model.vmStates.filter { $0.value == .dead }.keys.sorted())
            try await vm(name).launch()
            model.vmStates[name] = .running
            record(kind, name)
        case .qemuPause:
            let name = random.pick(model.vmStates.filter { $0.value == .running }.keys.sorted())
            try await vm(name).command("stop")
            model.vmStates[name] = .paused
            record(kind, name)
        case .qemuContinue:
            let name = random.pick(model.vmStates.filter { $0.value == .paused }.keys.sorted())
            try await vm(name).command("cont")
            model.vmStates[name] = .running
            record(kind, name)
        case .daemonKill:
            try await stopDaemon(signal: SIGKILL)
            record(kind)
        case .daemonTerm:
            try await stopDaemon(signal: SIGTERM)
            record(kind)
        case .daemonStart:
            try startDaemon()
        case .netlinkBurst:
            try await burst(withFault: random.chance(0.6))
        case .foreignAdd:
            try await addForeign(on: random.pick(present))
        case .foreignDelete:
            let foreign = random.pick(model.foreign)
            try await sh("ip link del \(foreign.name)")
            model.foreign.removeAll { $0.name == foreign.name }
            record(kind, foreign.name)
        }
    }

    /// A shell script inside the namespace.
    func sh(_ script: String) async throws {
        try await sandbox.namespace.exec(["sh", "-ec", script])
    }

    func deleteLower(_ name: String) async throws {
        try await sh("ip link del \(name)")
        let identity = model.lower(name).identity
        model.foreign.removeAll { $0.lowerIdentity == identity }
        model.update(name) { $0.state = .absent }
    }

    func addLower(_ name: String) async throws {
        try await sh(
            "ip link add \(name) type veth peer name \(name)p && ip link set \(name) up && ip link set \(name)p up")
        let identity = model.nextIdentity
        model.nextIdentity += 1
        model.update(name) {
            $0.state = .present
            $0.peerUp = true
            $0.identity = identity
        }
    }

    func renameBack(_ name: String, from other: String) async throws {
        try await sh("ip link set \(other) name \(name) && ip link set \(name) up")
        model.update(name) { $0.state = .present }
    }

    /// The veths behind two names trade places (a card swap, a renumbered bond), peers with them.
    func swap(_ first: String, _ second: String) async throws {
        try await sh(
            """
            ip link set \(first) down; ip link set \(second) down
            ip link set \(first)p down; ip link set \(second)p down
            ip link set \(first) name swtmp; ip link set \(second) name \(first); ip link set swtmp name \(second)
            ip link set \(first)p name swtmpp; ip link set \(second)p name \(first)p; ip link set swtmpp name \(second)p
            ip link set \(first) up; ip link set \(second) up; ip link set \(first)p up; ip link set \(second)p up
            """)
        let (one, two) = (model.lower(first).identity, model.lower(second).identity)
        model.update(first) {
            $0.identity = two
            $0.peerUp = true
        }
        model.update(second) {
            $0.identity = one
            $0.peerUp = true
        }
    }

    func addForeign(on lower: String) async throws {
        let name = ["fx0", "fx1", "fx2"].first { name in !model.foreign.contains { $0.name == name } }!
        let mode: MacvtapMode = random.pick([.bridge, .vepa, .private])
        let mac = MACAddress(
            String(
                format: "02:f0:%02x:%02x:%02x:%02x", Int.random(in: 0...255, using: &random),
                Int.random(in: 0...255, using: &random), Int.random(in: 0...255, using: &random),
                Int.random(in: 1...255, using: &random)))!
        try await sh(
            "ip link add \(name) link \(lower) address \(mac) type macvtap mode \(mode.rawValue) && ip link set \(name) up"
        )
        guard let link = try await SoakLink.all(in: sandbox.namespace).first(where: { $0.name == name }) else {
            throw ChildError("foreign macvtap \(name) vanished at once")
        }
        model.foreign.append(
            SoakForeign(
                name: name, lowerIdentity: model.lower(lower).identity, ifindex: link.ifindex, mode: mode, mac: mac))
        record(.foreignAdd, "\(name) on \(lower), \(mode.rawValue)")
    }

    /// Hundreds of link changes while the daemon cannot read (stopped, as a daemon starved of CPU
    /// is): its rtnetlink socket overflows (ENOBUFS) and it must resync. With `withFault`, a real
    /// host fault happens in the middle, so only the resync can tell the daemon about it.
    func burst(withFault: Bool) async throws {
        guard let daemon else { return }
        kill(daemon.pid, SIGSTOP)
        var detail = "400 alias changes"
        do {
            try await noiseBurst(changes: 200)
            if withFault {
                let present = model.lowers.filter { $0.state == .present }.map(\.name)
                if let name = present.isEmpty ? nil : random.pick(present) {
                    if random.chance(0.5) {
                        try await deleteLower(name)
                        try await addLower(name)
                        detail += ", \(name) deleted and re-added"
                    } else {
                        let up = !model.lower(name).peerUp
                        try await sh("ip link set \(name)p \(up ? "up" : "down")")
                        model.update(name) { $0.peerUp = up }
                        detail += ", \(name) carrier \(up ? "up" : "down")"
                    }
                }
            }
            try await noiseBurst(changes: 200)
        } catch {
            kill(daemon.pid, SIGCONT)
            throw error
        }
        kill(daemon.pid, SIGCONT)
        record(.netlinkBurst, detail)
    }

    func noiseBurst(changes: Int) async throws {
        let batch = sandbox.directory.path + "/burst.batch"
        let tag = Int.random(in: 0..<1_000_000, using: &random)
        let lines = (0..<changes).map { "link set \(Self.noise) alias soak-noise-\(tag)-\($0)" }
        try (lines.joined(separator: "\n") + "\n").write(toFile: batch, atomically: false, encoding: .utf8)
        try await sandbox.namespace.ip("-batch", batch)
    }
}
