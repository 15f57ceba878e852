import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport

struct GuestBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "What a real Linux guest sees: host interface back → guest answers; bond failover gap.",
        discussion: """
            A TCG Linux guest (GuestSandbox) whose NICs macvtapd binds to veths in a network
            namespace; the veths' peers are ports of a bridge (10.99.0.1) that pings the guest
            (10.99.0.2) with ICMP echoes from a raw socket. The daemon runs with rtnetlink events
            (the product) and with `--no-events --resync 1` (1 s polling, the baseline).
            - reconnect: the host interface is deleted, the guest reports carrier down, then the
              interface returns (a new veth pair whose peer joins the bridge), in two ways:
              all at once (one `ip -batch`: appears, joins, has carrier within ~2 ms), timed from
              the RTM_NEWLINK that announces it; and as a physical port returns, carrier later (it
              appears with its far side down; once the daemon has attached in NoCarrier, the far
              side comes up), timed from the RTM_NEWLINK that reports the carrier. Both to the first
              echo reply, with an echo every millisecond; RTM_NEWLINK times are when the
              benchmark's own link monitor receives them (the daemon gets the same notification).
            - bond failover: the guest bonds eth0/eth1 active-backup (miimon 100 ms, primary eth0,
              `mac: guest`); the host interface under eth0 is deleted while the bridge sends an
              echo every 5 ms. The gap is the longest run of unanswered echoes × 5 ms. eth0's host
              interface returns between rounds and the bond goes back to it.
            """)

    @Option(help: "Reconnect flaps with events.") var flaps = 20
    @Option(help: "Reconnect flaps of the 1 s polling baseline.") var baselineFlaps = 20
    @Option(help: "Bond failover rounds per daemon mode.") var bondRounds = 10

    static let nic0 = GuestNIC(id: "nic0", hub: 10, mac: MACAddress("52:54:00:9b:00:10")!)
    static let nic1 = GuestNIC(id: "nic1", hub: 11, mac: MACAddress("52:54:00:9b:00:11")!)
    static let polling = ["--no-events", "--resync", "1"]

    func run() async throws {
        print(
            "guest: \(flaps) reconnect flaps with events, \(baselineFlaps) with 1 s polling; "
                + "\(bondRounds) bond failovers each")
        let reconnect = try await Self.measureReconnect(flaps: flaps, daemonArguments: [])
        let polling = try await Self.measureReconnect(flaps: baselineFlaps, daemonArguments: Self.polling)
        let carrier = try await Self.measureReconnect(flaps: flaps, daemonArguments: [], carrierLater: true)

        let carrierPolling = try await Self.measureReconnect(
            flaps: baselineFlaps, daemonArguments: Self.polling, carrierLater: true)
        let bond = try await measureBondFailover(rounds: bondRounds, daemonArguments: [])
        let bondPolling = try await measureBondFailover(rounds: bondRounds, daemonArguments: Self.polling)
        print(ResultRow.header())
        print(
            ResultRow(
                measure: "host interface returns with carrier at once (RTM_NEWLINK) → guest answers ping",
                macvtapd: LatencySummary(reconnect.samples), baseline: LatencySummary(polling.samples), target: ""
            ).markdown)
        print(
            ResultRow(
                measure: "host interface returned, then its carrier (RTM_NEWLINK) → guest answers ping",
                macvtapd: LatencySummary(carrier.samples), baseline: LatencySummary(carrierPolling.samples),
                target: "median ≤ 10 ms"
            ).markdown)
        print(
            ResultRow(
                measure: "… of which the daemon: carrier → set_link up + announce-self (first RARP on the wire)",
                macvtapd: carrier.daemonShare.isEmpty ? nil : LatencySummary(carrier.daemonShare), baseline: nil,
                target: ""
            ).markdown)
        print(
            ResultRow(
                measure: "bond failover gap (lost echoes × 5 ms, miimon 100 ms)", macvtapd: LatencySummary(bond),
                baseline: LatencySummary(bondPolling), target: "≈ miimon"
            ).markdown)
    }

    static func measureReconnect(flaps: Int, daemonArguments: [String], carrierLater: Bool = false) async throws
        -> (samples: [Duration], daemonShare: [Duration])
    {
        var configuration = GuestConfiguration(nics: [Self.nic0])
        configuration.addresses = ["eth0": "10.99.0.2/24"]
        return try await GuestSandbox.with(configuration, lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let daemon = try sandbox.startDaemon(daemonArguments)
            defer { Task { await daemon.stop() } }
            try await sandbox.waitForPhase(.attached, bindings: 1)
            let rounds = try await reconnectRounds(
                flaps, sandbox: sandbox, guest: sandbox.vm, nic: Self.nic0, daemon: daemon, carrierLater: carrierLater)
            let mode = daemonArguments.isEmpty ? "events" : "polling"
            print("reconnect \(mode)\(carrierLater ? ", carrier later" : ""): \(LatencySummary(rounds.samples))")
            if !rounds.kernelShare.isEmpty {
                print("lower carrier → macvtap carrier (kernel): \(LatencySummary(rounds.kernelShare))")
            }
            return (rounds.samples, rounds.daemonShare)
        }
    }

    /// `flaps` times: the host interface up0 is deleted, the guest reports carrier down on `nic`, the
    /// interface returns (with carrier, or without and then its carrier), and the bridge pings the
    /// guest (10.99.0.2) every millisecond from the RTM_NEWLINK until it answers. Whoever launched the
    /// guest (the sandbox's own QEMU, libvirt); the binding must be attached when it starts.
    static func reconnectRounds(
        _ flaps: Int, sandbox: GuestSandbox, guest: any GuestConsoleReading, nic: GuestNIC, daemon: BackgroundProcess,
        carrierLater: Bool
    ) async throws -> (samples: [Duration], daemonShare: [Duration], kernelShare: [Duration]) {
        let pinger = try sandbox.pinger()
        let monitor = try LinkMonitor(networkNamespace: sandbox.namespace.path)
        let notifications = LinkNotifications(monitor)
        defer {
            pinger.close()
            monitor.close()
        }
        guard await pinger.firstReplyInBackground(interval: .milliseconds(5), timeout: .seconds(5)) != nil else {
            throw ChildError("the guest never answered: \(daemon.log())")
        }
        var samples: [Duration] = []
        var daemonShare: [Duration] = []
        var kernelShare: [Duration] = []
        for _ in 0..<flaps {
            try await sandbox.deleteLower("up0")
            try await guest.waitForCarrier(nic: nic, up: false)
            try await sandbox.addLower("up0", carrier: !carrierLater)
            var start = try await notifications.added("up0")
            var rarp: Task<ContinuousClock.Instant?, Never>?
            if carrierLater {
                try await sandbox.waitForPhase(.noCarrier, bindings: 1)
                rarp = try Self.firstRARP(on: "up0p", in: sandbox.namespace, from: nic.mac)
                try await sandbox.setCarrier(of: "up0", up: true)
                start = try await notifications.next(timeout: .seconds(5)) { (event: LinkEvent) in
                    if case .changed(let link) = event { return link.name == "up0" && link.hasCarrier == true }
                    return false
                }
            }
            let pinging = ContinuousClock.now
            guard
                let answered = await pinger.firstReplyInBackground(
                    interval: .milliseconds(1), timeout: .seconds(10))
            else { throw ChildError("the guest did not answer after the return: \(daemon.log())") }
            samples.append(pinging + answered - start)
            // QEMU sends a RARP as announce-self runs, right after set_link: the daemon's share.
            if let rarp, let at = await rarp.value { daemonShare.append(at - start) }
            if carrierLater {
                let macvtap = try await notifications.next(timeout: .seconds(1)) { (event: LinkEvent) in
                    if case .changed(let link) = event { return link.isMacvtap && link.hasCarrier == true }
                    return false
                }
                kernelShare.append(macvtap - start)
            }
            try await guest.waitForCarrier(nic: nic, up: true)
            try await sandbox.waitForPhase(.attached, bindings: 1)
        }
        return (samples, daemonShare, kernelShare)
    }

    /// When the first RARP from `mac` shows up on `interface`, watched from a thread of its own.
    static func firstRARP(on interface: String, in namespace: NetworkNamespace, from mac: MACAddress) throws
        -> Task<ContinuousClock.Instant?, Never>
    {
        let wire = try PacketSocket(interface: interface, in: namespace)
        return Task {
            await withCheckedContinuation { continuation in
                Thread {
                    defer { wire.close() }
                    // Bound while the port was down, the socket holds ENETDOWN for its first read.
                    let deadline = ContinuousClock.now + .seconds(3)
                    while ContinuousClock.now < deadline {
                        let frame = try? wire.receive(timeout: deadline - ContinuousClock.now) { frame in
                            frame.count >= 14 && frame[12] == 0x80 && frame[13] == 0x35
                                && Array(frame[6..<12]) == mac.bytes
                        }
                        if frame != nil { return continuation.resume(returning: ContinuousClock.now) }
                    }
                    continuation.resume(returning: nil)
                }.start()
            }
        }
    }

    func measureBondFailover(rounds: Int, daemonArguments: [String]) async throws -> [Duration] {
        var configuration = GuestConfiguration(nics: [Self.nic0, Self.nic1])
        configuration.bonds = [GuestBond(name: "bond0", slaves: ["eth0", "eth1"], primary: "eth0")]
        configuration.addresses = ["bond0": "10.99.0.2/24"]
        return try await GuestSandbox.with(configuration, lowers: ["up0", "up1"]) { sandbox in
            let vm = sandbox.vm
            try sandbox.writeConfig(bindings: [("nic0", "up0"), ("nic1", "up1")], extra: ["mac: guest"])
            let daemon = try sandbox.startDaemon(daemonArguments)
            defer { Task { await daemon.stop() } }
            try await sandbox.waitForPhase(.attached, bindings: 2)
            let pinger = try sandbox.pinger()
            defer { pinger.close() }
            guard await pinger.firstReplyInBackground(interval: .milliseconds(5), timeout: .seconds(5)) != nil else {
                throw ChildError("the guest never answered through bond0: \(daemon.log())")
            }
            let interval = Duration.milliseconds(5)
            var gaps: [Duration] = []
            for _ in 0..<rounds {
                var mark = vm.lines.count
                async let echoes = pinger.streamInBackground(interval: interval, for: .milliseconds(2500))
                try await Task.sleep(for: .milliseconds(300))
                try await sandbox.deleteLower("up0")
                try await vm.waitForEvent(matching: { $0 == .bond("bond0", active: "eth1") }, from: mark)
                let results = await echoes
                var longest = 0
                var run = 0
                for echo in results {
                    run = echo.answered ? 0 : run + 1
                    longest = max(longest, run)
                }
                gaps.append(interval * longest)
                mark = vm.lines.count
                try await sandbox.addLower("up0")
                try await vm.waitForEvent(
                    matching: { $0 == .bond("bond0", active: "eth0") }, from: mark, timeout: .seconds(15))
                try await sandbox.waitForPhase(.attached, bindings: 2)
                guard await pinger.firstReplyInBackground(interval: .milliseconds(5), timeout: .seconds(5)) != nil
                else { throw ChildError("no answer after eth0 came back: \(daemon.log())") }
            }
            print("bond failover \(daemonArguments.isEmpty ? "events" : "polling"): \(LatencySummary(gaps))")
            return gaps
        }
    }
}
