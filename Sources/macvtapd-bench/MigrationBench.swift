import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdReconciler
import MacvtapdTestSupport

struct MigrationBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migration",
        abstract:
            "Live migration of a real guest between two hosts: what each client loses, against a macvtap made outside.",
        discussion: """
            TwoHosts (a network namespace per host, each eth0 a port of one switch bridge, a
            co-located client per host: a bridge-mode macvlan on that eth0) and the TCG test guest
            (10.99.0.2), live-migrated over a unix socket (QMP `migrate`), alternating a→b and b→a.
            During each migration the switch and both co-located clients send an ICMP echo every
            --interval-ms. Per migration: QEMU's downtime (`query-migrate`); the longest time
            without a reply at each client; the guest's own silence, from the last frame it sent on
            the source to the first it sent on the destination, seen by a probe on its NIC's hub
            (before any backend: no macvtap in that path; QEMU's RARPs left out), and the same from
            RESUME; its serial-console heartbeat's silence; the handover share (the daemon's
            `handover: macvtap up X ms after RESUME`); echoes lost before the source stopped (sent
            more than 20 ms before its STOP and unanswered for 500 ms); and the switch's FDB moves
            of the guest MAC (`bridge -timestamp monitor fdb`).
            macvtapd: `macvtapd run` on both hosts with the same desired state.
            Baseline: what a macvtap made outside the VM manager amounts to (KubeVirt): this
            benchmark creates the macvtap up on the destination before the incoming QEMU starts and
            attaches it (the project's netlink driver and QMP connection, no daemon), and leaves the
            source's up until the source QEMU exits, then deletes it (the pod's teardown). QEMU's
            own announce after an incoming migration is the only announce.
            Both: the destination is ready (Migrating / attached) before `migrate`; the source QEMU
            quits 500 ms after RESUME.
            """)

    @Option(help: "Migrations with macvtapd (alternating a→b, b→a).") var migrations = 10
    @Option(help: "Migrations of the baseline.") var baselineMigrations = 10
    @Option(help: "Echo interval of every client, in milliseconds.") var intervalMs = 2
    @Option(help: "A directory to copy both daemons' logs into.") var keepLogs: String?

    static let nic0 = GuestNIC(id: "nic0", hub: 10, mac: MACAddress("52:54:00:9e:00:10")!)
    static let key = BindingKey(vm: "guest", nic: "nic0")

    enum Variant: String {
        case macvtapd
        case baseline
    }

    /// One migration's measurements.
    struct Sample {
        var route: String
        var downtime: Duration
        var floor: Duration?
        var afterResume: Duration?
        var heartbeat: Duration?
        /// Switch, client co-located on the source, client co-located on the destination.
        var gaps: [Duration?]
        var lostBefore: [Int]
        var handover: Duration?
        /// The daemons' own timing of the RTM_NEWLINK that set the destination's macvtap up and the
        /// source's down (the kernel's share, RTNL included).
        var netlinkUp: Duration?
        var netlinkDown: Duration?
        /// From the kernel's own RTM_NEWLINK notifications (`ip -timestamp monitor link` per host):
        /// RESUME → the destination's macvtap announced up, STOP → the source's announced down, and
        /// whether the destination's up was announced after the source's down (one RTNL here).
        var kernelUp: Duration?
        var kernelDown: Duration?
        var upAfterDown: Bool?
        var moves: [FDBMonitor.Entry]
        var movedOnceAfterHandover: Bool
        /// RESUME → the switch learned the guest on the destination's port (its last move there).
        var fdbAfterResume: Duration?

        var beyondFloor: Duration? {
            guard let floor, !gaps.contains(where: { $0 == nil }) else { return nil }
            return gaps.compactMap { $0 }.max().map { $0 - floor }
        }

        var line: String {
            func text(_ duration: Duration?) -> String { duration.map(LatencySummary.milliseconds) ?? "–" }
            return "\(route): downtime \(text(downtime)), floor \(text(floor)) (after RESUME \(text(afterResume))), "
                + "heartbeat \(text(heartbeat)), gaps switch \(text(gaps[0])) / source-host client \(text(gaps[1])) "
                + "/ destination-host client \(text(gaps[2])), lost before handover \(lostBefore), "
                + "handover \(text(handover)) (RTM_NEWLINK up \(text(netlinkUp)), source down \(text(netlinkDown))), "
                + "kernel: RESUME → up announced \(text(kernelUp)), STOP → source down announced \(text(kernelDown)), "
                + "up after source down \(upAfterDown.map(String.init) ?? "–"), "
                + "FDB moves \(moves.map(\.port)) (RESUME → learned on the destination's port \(text(fdbAfterResume)))"
        }
    }

    func run() async throws {
        let interval = Duration.milliseconds(intervalMs)
        print(
            "migration: \(migrations) live migrations with macvtapd, \(baselineMigrations) with a macvtap made "
                + "outside (baseline); echo every \(intervalMs) ms from the switch and both co-located clients")
        let ours = try await measure(.macvtapd, count: migrations, interval: interval)
        let baseline = try await measure(.baseline, count: baselineMigrations, interval: interval)

        func summary(_ samples: [Sample], _ value: (Sample) -> Duration?) -> LatencySummary? {
            let values = samples.compactMap(value)
            return values.isEmpty ? nil : LatencySummary(values)
        }
        func row(_ measure: String, target: String = "", _ value: (Sample) -> Duration?) {
            print(
                ResultRow(
                    measure: measure, macvtapd: summary(ours, value), baseline: summary(baseline, value),
                    target: target
                ).markdown)
        }
        print(ResultRow.header())
        row("QEMU downtime (query-migrate)") { $0.downtime }
        row("guest's own silence: last frame it sent on the source → first on the destination (floor)") { $0.floor }
        row("… of it after RESUME: RESUME → first frame the guest sent on the destination") { $0.afterResume }
        row("guest heartbeat silence on its serial console (\(intervalMs) ms beat)") { $0.heartbeat }
        row("longest ping gap, switch") { $0.gaps[0] }
        row("longest ping gap, client co-located on the source") { $0.gaps[1] }
        row("longest ping gap, client co-located on the destination") { $0.gaps[2] }
        row("worst client's gap beyond the floor", target: "≤ 10 ms") { $0.beyondFloor }
        row("handover share: RESUME → macvtap up (daemon's log)", target: "p99 ≤ 2 ms") { $0.handover }
        row("… of which the RTM_NEWLINK setting it up (kernel, RTNL shared by both hosts here)") { $0.netlinkUp }
        row("source: RTM_NEWLINK taking its macvtap down (kernel)") { $0.netlinkDown }
        row("RESUME → the switch learned the guest on the destination's port (bridge monitor)") { $0.fdbAfterResume }
        row("RESUME → destination macvtap announced up by the kernel (ip monitor)") { $0.kernelUp }
        row("source STOP → source macvtap out of the MAC table: down, or deleted after QEMU quit (ip monitor)") {
            $0.kernelDown
        }
        for (variant, samples) in [("macvtapd", ours), ("baseline", baseline)] {
            let lost = (0..<3).map { index in samples.reduce(0) { $0 + $1.lostBefore[index] } }
            let once = samples.count { $0.movedOnceAfterHandover }
            let moves = samples.map { String($0.moves.count) }.joined(separator: ",")
            print(
                "\n\(variant): echoes lost before handover (switch / source-host client / destination-host client): "
                    + "\(lost.map(String.init).joined(separator: " / ")) over \(samples.count) migrations; "
                    + "FDB moved once, to the destination, after RESUME: \(once)/\(samples.count) (moves per migration: \(moves))"
            )
        }
        let ordered = ours.compactMap(\.upAfterDown)
        print(
            "macvtapd: destination's up announced after the source's down (one kernel, one RTNL): "
                + "\(ordered.count { $0 })/\(ordered.count)")
        // No worse: within one echo interval of the switch's gap (the resolution of every gap here).
        for (variant, samples) in [("macvtapd", ours), ("baseline", baseline)] {
            let comparable = samples.filter { !$0.gaps.contains { $0 == nil } }
            let worse = comparable.count { sample in
                sample.gaps[1...].contains { $0! > sample.gaps[0]! + interval }
            }
            print(
                "\(variant): migrations where a co-located client's gap exceeded the switch's by more than "
                    + "\(intervalMs) ms: \(worse)/\(comparable.count)")
        }
    }

    // MARK: - One variant

    func measure(_ variant: Variant, count: Int, interval: Duration) async throws -> [Sample] {
        try await TwoHosts.with { hosts in
            let rig = try await Rig(variant, hosts: hosts)
            defer { rig.cleanup() }
            var current = try await rig.launch(on: hosts.a, incoming: nil)
            try await current.vm.waitUntilReady(timeout: .seconds(60))
            try await rig.sourceStarted(on: hosts.a)
            let pingers = try [hosts.network, hosts.a.client, hosts.b.client].map {
                try ICMPPinger(target: "10.99.0.2", in: $0)
            }
            defer { pingers.forEach { $0.close() } }
            for pinger in pingers {
                guard await pinger.firstReplyInBackground(interval: .milliseconds(5), timeout: .seconds(10)) != nil
                else {
                    throw ChildError("\(variant): the guest never answered \(pinger.target): \(rig.logs)")
                }
            }
            var samples: [Sample] = []
            var here = hosts.a
            for index in 0..<count {
                let there = here.name == "a" ? hosts.b : hosts.a
                let (sample, next) = try await migrate(
                    current, from: here, to: there, rig: rig, pingers: pingers, interval: interval, index: index)
                print("\(variant) \(index + 1): \(sample.line)")
                samples.append(sample)
                current = next
                here = there
            }
            current.stop()
            if let keepLogs {
                for (name, daemon) in rig.daemons {
                    try daemon.log().write(toFile: "\(keepLogs)/daemon-\(name).log", atomically: true, encoding: .utf8)
                }
            }
            return samples
        }
    }

    func migrate(
        _ source: Rig.Guest, from: TwoHosts.Host, to: TwoHosts.Host, rig: Rig, pingers: [ICMPPinger],
        interval: Duration, index: Int
    ) async throws -> (Sample, Rig.Guest) {
        let hosts = rig.hosts
        let portBefore = try await hosts.learnedPort(of: Self.nic0.mac)
        let watchFrom = WallClock.now()
        let handoversBefore = rig.handovers(on: to).count
        let upsBefore = rig.actionDurations("up: ok", on: to).count
        let downsBefore = rig.actionDurations("down: ok", on: from).count
        let streams = pingers.map { PingStream($0, interval: interval) }
        try await Task.sleep(for: .milliseconds(200))

        let incoming = hosts.directory.path + "/migrate-\(index).sock"
        let destination = try await rig.launch(on: to, incoming: incoming)
        try await rig.destinationStarted(on: to)
        try await Task.sleep(for: .milliseconds(200))
        let record = try await LiveMigration.migrate(source.vm, to: destination.vm, incoming: incoming)

        // The VM manager's own bookkeeping before it ends the source QEMU: the same in both variants.
        try await Task.sleep(for: .milliseconds(500))
        source.stop()
        try await rig.sourceQuit(on: from)
        try await Task.sleep(for: .milliseconds(300))
        var echoes: [[PingStream.Echo]] = []
        for stream in streams { echoes.append(await stream.stop()) }

        // Clients in the order switch, co-located on the source, co-located on the destination.
        let ordered = from.name == "a" ? [echoes[0], echoes[1], echoes[2]] : [echoes[0], echoes[2], echoes[1]]
        let gaps = ordered.map { PingStream.longestSilence($0).map { Duration.wall($0.to - $0.from) } }
        let lost = ordered.map {
            PingStream.lost($0, sentBefore: record.sourceStoppedAt - 20_000, patience: .milliseconds(500)).count
        }
        let lastOnSource = source.frames.times.last { $0 <= record.sourceStoppedAt }
        let firstOnDestination = destination.frames.times.first { $0 > record.resumedAt }
        let floor = lastOnSource.flatMap { last in firstOnDestination.map { Duration.wall($0 - last) } }
        let afterResume = firstOnDestination.map { Duration.wall($0 - record.resumedAt) }
        let heartbeat = ConsoleHeartbeat.silence(
            across: record.sourceStoppedAt, before: source.beats.times, after: destination.beats.times
        ).map { Duration.wall($0.to - $0.from) }
        let handover = rig.handovers(on: to).dropFirst(handoversBefore).first
        let netlinkUp = rig.actionDurations("up: ok", on: to).dropFirst(upsBefore).first
        let netlinkDown = rig.actionDurations("down: ok", on: from).dropFirst(downsBefore).first
        let moves = rig.fdb.moves(of: Self.nic0.mac, after: watchFrom, from: portBefore)
        let name = Ownership.macvtapName(for: Self.key)
        let upAt = rig.links[to.name]!.firstTurned(name, up: true, after: watchFrom)
        let downAt = rig.links[from.name]!.firstTurned(name, up: false, after: watchFrom)
        // The baseline's destination macvtap was up before its QEMU started: no handover to time.
        let kernelUp = rig.variant == .baseline ? nil : upAt.map { Duration.wall($0 - record.resumedAt) }
        let kernelDown = downAt.map { Duration.wall($0 - record.sourceStoppedAt) }
        let upAfterDown = upAt.flatMap { up in downAt.map { up > $0 } }
        let fdbAfterResume = moves.last { $0.port == to.switchPort }.map { Duration.wall($0.at - record.resumedAt) }
        let once = moves.count == 1 && moves[0].port == to.switchPort && moves[0].at > record.resumedAt
        let sample = Sample(
            route: "\(from.name)→\(to.name)", downtime: record.downtime, floor: floor, afterResume: afterResume,
            heartbeat: heartbeat, gaps: gaps, lostBefore: lost, handover: handover, netlinkUp: netlinkUp,
            netlinkDown: netlinkDown, kernelUp: kernelUp, kernelDown: kernelDown, upAfterDown: upAfterDown,
            moves: moves, movedOnceAfterHandover: once, fdbAfterResume: fdbAfterResume)
        return (sample, destination)
    }
}

// MARK: - The two hosts, the guest's QEMUs and whoever manages their macvtaps

extension MigrationBench {
    final class Rig: Sendable {
        /// One QEMU of the guest, with a probe on its hub and its heartbeat followed.
        struct Guest: Sendable {
            let vm: GuestVM
            let probe: Probe
            let frames: GuestFrames
            let beats: ConsoleHeartbeat

            func stop() {
                vm.terminate()
                frames.stop()
                beats.stop()
                probe.close()
            }
        }

        let variant: Variant
        let hosts: TwoHosts
        let fdb: FDBMonitor
        let links: [String: LinkStateMonitor]
        let daemons: [String: BackgroundProcess]
        /// The baseline's macvtaps, made by the benchmark itself in each host's namespace.
        let drivers: [String: NetlinkHostDriver]
        let sysfs: [NetworkNamespaceSysfs]
        let base: GuestConfiguration

        init(_ variant: Variant, hosts: TwoHosts) async throws {
            self.variant = variant
            self.hosts = hosts
            var configuration = GuestConfiguration(nics: [MigrationBench.nic0])
            configuration.addresses = ["eth0": "10.99.0.2/24"]
            configuration.heartbeat = .milliseconds(2)
            base = configuration
            fdb = try await FDBMonitor(in: hosts.network, logPath: hosts.directory.path + "/fdb.log")
            var daemons: [String: BackgroundProcess] = [:]
            var drivers: [String: NetlinkHostDriver] = [:]
            var mounts: [NetworkNamespaceSysfs] = []
            var links: [String: LinkStateMonitor] = [:]
            for host in [hosts.a, hosts.b] {
                links[host.name] = try await LinkStateMonitor(
                    in: host.namespace, logPath: hosts.directory.path + "/links-\(host.name).log")
                switch variant {
                case .macvtapd:
                    try hosts.writeConfig(
                        TwoHosts.config(vm: "guest", qmp: Self.monitor(on: host), nics: ["nic0"]), on: host)
                    daemons[host.name] = try hosts.startDaemon(on: host)
                case .baseline:
                    let sysfs = try NetworkNamespaceSysfs(of: host.namespace)
                    mounts.append(sysfs)
                    mkdir(host.deviceDirectory, 0o700)
                    drivers[host.name] = try host.namespace.withEntered {
                        try NetlinkHostDriver(deviceDirectory: host.deviceDirectory, sysfsRoot: sysfs.path)
                    }
                }
            }
            self.daemons = daemons
            self.links = links
            self.drivers = drivers
            sysfs = mounts
        }

        func cleanup() {
            for mount in sysfs { mount.unmount() }
        }

        static func monitor(on host: TwoHosts.Host) -> String { host.directory + "/guest.qmp" }

        var logs: String { daemons.values.map { $0.log() }.joined(separator: "\n") }

        func launch(on host: TwoHosts.Host, incoming: String?) async throws -> Guest {
            if incoming != nil, variant == .baseline {
                // Made up before the incoming QEMU exists, as a CNI plugin makes it before the pod starts.
                _ = try await createMacvtap(on: host)
            }
            let probe = try Probe()
            var configuration = LiveMigration.configuration(base, monitor: Self.monitor(on: host), incoming: incoming)
            configuration.extraQEMUArguments += probe.qemuArguments(hubID: MigrationBench.nic0.hub)
            let vm: GuestVM
            do {
                vm = try await GuestVM.launch(configuration)
            } catch {
                probe.close()
                throw error
            }
            return Guest(
                vm: vm, probe: probe, frames: GuestFrames(probe, from: MigrationBench.nic0.mac),
                beats: try ConsoleHeartbeat(consolePath: vm.consolePath))
        }

        func sourceStarted(on host: TwoHosts.Host) async throws {
            switch variant {
            case .macvtapd: try await waitForPhase(.attached, on: host)
            case .baseline: try await attach(on: host, macvtap: try await createMacvtap(on: host))
            }
        }

        func destinationStarted(on host: TwoHosts.Host) async throws {
            switch variant {
            case .macvtapd:
                try await waitForPhase(.migrating, on: host)
            case .baseline:
                let name = Ownership.macvtapName(for: MigrationBench.key)
                guard let link = try await drivers[host.name]!.links().first(where: { $0.name == name }) else {
                    throw ChildError("baseline: no macvtap \(name) on host \(host.name)")
                }
                try await attach(on: host, macvtap: link)
            }
        }

        func sourceQuit(on host: TwoHosts.Host) async throws {
            switch variant {
            case .macvtapd:
                try await waitForPhase(.vmNotRunning, on: host)
            case .baseline:
                let driver = drivers[host.name]!
                for link in try await driver.links() where link.name == Ownership.macvtapName(for: MigrationBench.key) {
                    try await driver.deleteMacvtap(ifindex: link.ifindex, name: link.name)
                }
            }
        }

        /// The daemon's handover shares on `host`, in log order.
        func handovers(on host: TwoHosts.Host) -> [Duration] {
            guard let log = daemons[host.name]?.log() else { return [] }
            return log.split(separator: "\n").compactMap { line in
                guard let range = line.range(of: "handover: macvtap up ") else { return nil }
                let number = line[range.upperBound...].prefix { $0.isNumber || $0 == "." }
                return Double(number).map { Duration.microseconds(Int64(($0 * 1000).rounded())) }
            }
        }

        /// Durations of the daemon's `bring macvtap X up: ok` (or `take ... down: ok`) lines on `host`.
        func actionDurations(_ suffix: String, on host: TwoHosts.Host) -> [Duration] {
            guard let log = daemons[host.name]?.log() else { return [] }
            return log.split(separator: "\n").compactMap { line in
                guard line.hasSuffix(suffix), line.contains(" macvtap "), let range = line.range(of: "duration_ms=")
                else { return nil }
                let number = line[range.upperBound...].prefix { $0.isNumber || $0 == "." }
                return Double(number).map { Duration.microseconds(Int64(($0 * 1000).rounded())) }
            }
        }

        private func waitForPhase(_ phase: Phase, on host: TwoHosts.Host) async throws {
            let reached = await eventually(within: .seconds(20)) { hosts.phase("guest", on: host) == phase }
            guard reached else {
                throw ChildError("host \(host.name) not \(phase.rawValue): \(daemons[host.name]?.log() ?? "")")
            }
        }

        private func createMacvtap(on host: TwoHosts.Host) async throws -> ObservedLink {
            let driver = drivers[host.name]!
            guard let lower = try await driver.links().first(where: { $0.name == "eth0" }) else {
                throw ChildError("baseline: no eth0 on host \(host.name)")
            }
            return try await driver.createMacvtap(
                MacvtapSpec(
                    name: Ownership.macvtapName(for: MigrationBench.key), lowerIfindex: lower.ifindex,
                    lowerName: lower.name, mode: .bridge, mac: MigrationBench.nic0.mac,
                    alias: Ownership.alias(for: MigrationBench.key), up: true))
        }

        /// getfd + netdev_add tap + hubport, as the daemon's executor does it.
        private func attach(on host: TwoHosts.Host, macvtap: ObservedLink) async throws {
            // A QEMU just spawned has not made its monitor socket yet.
            let connector = QMPConnector(timeout: .seconds(5))
            var attempt: (any VMConnection)?
            let deadline = ContinuousClock.now + .seconds(10)
            while attempt == nil {
                do {
                    attempt = try await connector.connect(vm: "guest", qmp: Self.monitor(on: host))
                } catch {
                    guard ContinuousClock.now < deadline else { throw error }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            let connection = attempt!
            let ids = Ownership.BackendIDs(nic: MigrationBench.nic0.id, ifindex: macvtap.ifindex)
            do {
                try await drivers[host.name]!.withOpenTap(ifindex: macvtap.ifindex, name: macvtap.name) { fd in
                    try await connection.attachBackend(ids, fd: fd, hub: MigrationBench.nic0.hub)
                }
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
        }
    }
}
