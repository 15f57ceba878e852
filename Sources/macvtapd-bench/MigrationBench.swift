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
