import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// VM lifecycle and live migration with the real daemon on two hosts (network namespaces cabled to
/// one switch), real QEMUs without a guest OS, frames checked through hub probes: a macvtap exists
/// only where its VM's QEMU runs, and is up only where the guest runs.
@Suite(.serialized) struct LifecycleTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:5e:00:01", hubID: 10)
    static var guestMAC: MACAddress { MACAddress(nic0.mac)! }

    /// One QEMU for the VM, with a probe on its NIC's hub and a monitor for the test.
    struct VMProcess {
        let qemu: QEMUProcess
        let probe: Probe

        static func launch(paused: Bool = false, incoming: String? = nil, qmp: String? = nil) async throws -> VMProcess
        {
            let probe = try Probe()
            do {
                let qemu = try await QEMUProcess.launch(
                    QEMUOptions(
                        nics: [nic0], probes: [(probe, nic0.hubID)], paused: paused, additionalMonitors: ["test.qmp"],
                        extraArguments: incoming.map { ["-incoming", "unix:\($0)"] } ?? [], qmpSocketPath: qmp))
                return VMProcess(qemu: qemu, probe: probe)
            } catch {
                probe.close()
                throw error
            }
        }

        func monitor() async throws -> QMPClient {
            try await QMPClient.connect(to: qemu.additionalMonitorPaths[0])
        }

        func runState() async throws -> String {
            let client = try await monitor()
            defer { Task { await client.close() } }
            return try await client.queryStatus().status
        }

        func ourNetdevs() async throws -> [String] {
            let client = try await monitor()
            defer { Task { await client.close() } }
            return try await client.networkInfo().netdevIDs.filter { $0.hasPrefix("mvtd.") }.sorted()
        }

        func stop() async {
            await qemu.terminate()
            probe.close()
        }
    }

    /// Runs `body` and stops every VM it launched through `launch`, even when `body` throws: a
    /// `defer { Task { ... } }` would leave QEMUs running after the test process exits.
    static func withVMs(_ body: (_ launch: Launcher) async throws -> Void) async throws {
        let launched = Mutex<[VMProcess]>([])
        func launch(paused: Bool, incoming: String?, qmp: String?) async throws -> VMProcess {
            let vm = try await VMProcess.launch(paused: paused, incoming: incoming, qmp: qmp)
            launched.withLock { $0.append(vm) }
            return vm
        }
        do {
            try await body(launch)
        } catch {
            for vm in launched.withLock({ $0 }) { await vm.stop() }
            throw error
        }
        for vm in launched.withLock({ $0 }) { await vm.stop() }
    }

    /// Starts a QEMU for the VM: paused (-S) or not, waiting for an incoming migration at a unix
    /// socket or not, with macvtapd's monitor at a fixed path or in its own directory.
    typealias Launcher = (_ paused: Bool, _ incoming: String?, _ qmp: String?) async throws -> VMProcess

    static func until(_ timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
        try await eventually(within: timeout, condition)
    }

    /// Frames the switch sends to the guest's MAC through `host`'s port until one reaches `vm`'s hub.
    static func frameReaches(_ vm: VMProcess, from host: TwoHosts.Host, in hosts: TwoHosts) async throws -> Bool {
        let socket = try await PacketSocket.open(interface: host.switchPort, in: hosts.network)
        defer { socket.close() }
        return try await vm.probe.receivesFrame(to: guestMAC, sentThrough: socket)
    }

    static func migrate(_ source: VMProcess, to path: String) async throws {
        let client = try await source.monitor()
        defer { Task { await client.close() } }
        try await client.execute("migrate", arguments: ["uri": .string("unix:\(path)")])
        let done = try await until(.seconds(20)) {
            try await client.execute("query-migrate")["status"]?.stringValue == "completed"
        }
        #expect(done, "migration completed")
    }

    static func macvtaps(_ hosts: TwoHosts, _ host: TwoHosts.Host) async -> [(name: String, up: Bool)] {
        (try? await hosts.macvtaps(on: host)) ?? []
    }

    @Test func startedPausedUnderSIsAttachedBeforeTheGuestFirstRuns() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let vm = try await launch(true, nil, nil)
                try hosts.writeConfig(
                    TwoHosts.config(vm: "web1", qmp: vm.qemu.qmpSocketPath, nics: ["nic0"]), on: hosts.a)
                let daemon = try await hosts.launchDaemon(on: hosts.a)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemon.log())")
                #expect(try await vm.runState() == "prelaunch", "macvtapd never starts the CPUs")
                #expect(try await vm.ourNetdevs().count == 2)
                #expect(await Self.macvtaps(hosts, hosts.a).map(\.up) == [true])

                let client = try await vm.monitor()
                try await client.execute("cont")
                await client.close()
                #expect(try await Self.frameReaches(vm, from: hosts.a, in: hosts), "frames flow once it runs")
                #expect(try await vm.ourNetdevs().count == 2, "nothing re-attached at cont")
                await daemon.stop()
            }
        }
    }

    @Test func liveMigrationMovesTheMacvtapWithTheGuest() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let source = try await launch(false, nil, nil)
                let incoming = hosts.directory.path + "/migration.sock"
                let destination = try await launch(false, incoming, nil)
                let yaml = { (qmp: String) in TwoHosts.config(vm: "web1", qmp: qmp, nics: ["nic0"]) }
                try hosts.writeConfig(yaml(source.qemu.qmpSocketPath), on: hosts.a)
                try hosts.writeConfig(yaml(destination.qemu.qmpSocketPath), on: hosts.b)
                let daemonA = try await hosts.launchDaemon(on: hosts.a)
                var daemonB = try await hosts.launchDaemon(on: hosts.b)

                // Before handover: the destination is ready but holds its macvtap down.
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemonA.log())")
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .migrating }, "\(daemonB.log())")
                #expect(try await destination.runState() == "inmigrate")
                #expect(try await destination.ourNetdevs().count == 2, "backend attached while inmigrate")
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.up) == [false], "out of b's MAC table")
                #expect(try await Self.frameReaches(source, from: hosts.a, in: hosts))

                // A restarted destination daemon adopts what it made: no second macvtap, no second backend.
                await daemonB.stop()
                daemonB = try await hosts.launchDaemon(on: hosts.b, ["--log-level", "debug"])
                // The restarted daemon's own word, not the status file its predecessor left: it has
                // observed the VM (the session is up, a reconcile ran), so it follows the handover.
                #expect(
                    await Self.until {
                        let own = daemonB.log().components(separatedBy: "configuration loaded").last ?? ""
                        return own.contains("QMP session with VM web1 established") && own.contains("reconciled:")
                    })
                #expect(hosts.phase("web1", on: hosts.b) == .migrating)
                #expect(!daemonB.log().contains("VMUnreachable"), "adoption does not flap the phase")
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.up) == [false])
                #expect(try await destination.ourNetdevs().count == 2)

                try await Self.migrate(source, to: incoming)

                // After handover: b's macvtap up and frames reach the guest there; a's down, backend kept.
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .attached }, "\(daemonB.log())")
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.up) == [true])
                #expect(try await Self.frameReaches(destination, from: hosts.b, in: hosts))
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .migratedAway }, "\(daemonA.log())")
                #expect(await Self.macvtaps(hosts, hosts.a).map(\.up) == [false])
                #expect(try await source.runState() == "postmigrate")
                #expect(try await source.ourNetdevs().count == 2, "kept until the source QEMU exits")
                #expect(daemonB.log().contains("handover: macvtap up"), "\(daemonB.log())")

                // The source QEMU quits: nothing of the VM stays on host a.
                await source.stop()
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .vmNotRunning }, "\(daemonA.log())")
                #expect(await Self.macvtaps(hosts, hosts.a).isEmpty)
                #expect(hosts.phase("web1", on: hosts.b) == .attached)
                await daemonA.stop()
                await daemonB.stop()
            }
        }
    }

    @Test func cancelledMigrationLeavesNothingOnTheDestination() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let source = try await launch(false, nil, nil)
                let destination = try await launch(false, hosts.directory.path + "/migration.sock", nil)
                try hosts.writeConfig(
                    TwoHosts.config(vm: "web1", qmp: source.qemu.qmpSocketPath, nics: ["nic0"]), on: hosts.a)
                try hosts.writeConfig(
                    TwoHosts.config(vm: "web1", qmp: destination.qemu.qmpSocketPath, nics: ["nic0"]), on: hosts.b)
                let daemonA = try await hosts.launchDaemon(on: hosts.a)
                let daemonB = try await hosts.launchDaemon(on: hosts.b)
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .migrating }, "\(daemonB.log())")
                #expect(await Self.macvtaps(hosts, hosts.b).count == 1)

                // The migration is given up: the destination QEMU quits, the source runs on.
                await destination.stop()
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .vmNotRunning }, "\(daemonB.log())")
                #expect(await Self.macvtaps(hosts, hosts.b).isEmpty, "host b keeps nothing: \(daemonB.log())")
                // Host a's daemon started beside b's and need not have converged yet: wait for it.
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemonA.log())")
                #expect(await Self.macvtaps(hosts, hosts.a).map(\.up) == [true])
                #expect(try await Self.frameReaches(source, from: hosts.a, in: hosts))
                await daemonA.stop()
                await daemonB.stop()
            }
        }
    }

    @Test func aDaemonStartingBesideLeftoversOfAStoppedVMDeletesThem() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let vm = try await launch(false, nil, nil)
                try hosts.writeConfig(
                    TwoHosts.config(vm: "web1", qmp: vm.qemu.qmpSocketPath, nics: ["nic0"]), on: hosts.a)
                var daemon = try await hosts.launchDaemon(on: hosts.a)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemon.log())")
                await daemon.stop()

                // QEMU quits while no daemon watches: the macvtap stays, up, holding the guest's MAC.
                await vm.stop()
                #expect(await Self.macvtaps(hosts, hosts.a).count == 1)
                daemon = try await hosts.launchDaemon(on: hosts.a)
                #expect(await Self.until { await Self.macvtaps(hosts, hosts.a).isEmpty }, "\(daemon.log())")
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .vmNotRunning })
                let notRunningLines = daemon.log().split(separator: "\n").filter { $0.contains("is not running here") }
                #expect(notRunningLines.count == 1, "one quiet line: \(notRunningLines)")
                await daemon.stop()
            }
        }
    }

    /// Each host's monitor path for the VM, fixed across its QEMUs as a VM manager's would be.
    static func monitorPath(_ hosts: TwoHosts, _ host: TwoHosts.Host) -> String { host.directory + "/web1.qmp" }

    /// Writes the same binding on both hosts, each pointing at its own fixed monitor path, and
    /// starts a daemon on each.
    static func fleet(_ hosts: TwoHosts) async throws -> (a: BackgroundProcess, b: BackgroundProcess) {
        for host in [hosts.a, hosts.b] {
            try hosts.writeConfig(
                TwoHosts.config(vm: "web1", qmp: monitorPath(hosts, host), nics: ["nic0"]), on: host)
        }
        return (try await hosts.launchDaemon(on: hosts.a), try await hosts.launchDaemon(on: hosts.b))
    }

    /// `from` hands the running guest to `to`: the destination waits for the incoming migration with
    /// its macvtap down while the source keeps answering, then the macvtap follows the guest.
    static func handOver(
        _ source: VMProcess, on from: TwoHosts.Host, to destinationHost: TwoHosts.Host, in hosts: TwoHosts,
        launch: Launcher, daemons: (a: BackgroundProcess, b: BackgroundProcess)
    ) async throws -> VMProcess {
        let logs = { "a: \(daemons.a.log())\nb: \(daemons.b.log())" }
        let to = destinationHost
        let incoming = to.directory + "/incoming.sock"
        let destination = try await launch(false, incoming, monitorPath(hosts, to))
        #expect(await until { hosts.phase("web1", on: to) == .migrating }, "\(logs())")
        #expect(await macvtaps(hosts, to).map(\.up) == [false], "held down before handover")
        #expect(try await frameReaches(source, from: from, in: hosts), "the source still answers")

        try await migrate(source, to: incoming)
        #expect(await until { hosts.phase("web1", on: to) == .attached }, "\(logs())")
        #expect(await macvtaps(hosts, to).map(\.up) == [true])
        #expect(try await frameReaches(destination, from: to, in: hosts), "the guest answers at its new home")
        #expect(await until { hosts.phase("web1", on: from) == .migratedAway }, "\(logs())")
        #expect(await macvtaps(hosts, from).map(\.up) == [false])
        // The destination announced after handover (QEMU's RARPs from the guest's MAC): the switch
        // now sends the guest's frames to the destination's port.
        let learned = try await until { try await hosts.learnedPort(of: guestMAC) == to.switchPort }
        let port = try await hosts.learnedPort(of: guestMAC)
        #expect(learned, "the switch learned the guest's MAC on \(port ?? "no port"), not \(to.switchPort)")

        await source.stop()
        #expect(await until { hosts.phase("web1", on: from) == .vmNotRunning }, "\(logs())")
        #expect(await until { await macvtaps(hosts, from).isEmpty }, "nothing of the VM stays on \(from.name)")
        return destination
    }

    @Test func migrationThereAndBackLeavesOneMacvtapWhereTheGuestRuns() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let first = try await launch(false, nil, Self.monitorPath(hosts, hosts.a))
                let daemons = try await Self.fleet(hosts)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemons.a.log())")
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .vmNotRunning }, "\(daemons.b.log())")
                #expect(await Self.macvtaps(hosts, hosts.b).isEmpty, "a VM that does not run here costs nothing")

                let there = try await Self.handOver(
                    first, on: hosts.a, to: hosts.b, in: hosts, launch: launch, daemons: daemons)
                let back = try await Self.handOver(
                    there, on: hosts.b, to: hosts.a, in: hosts, launch: launch, daemons: daemons)
                #expect(try await back.ourNetdevs().count == 2)
                #expect(daemons.a.log().contains("handover: macvtap up"), "\(daemons.a.log())")
                #expect(daemons.b.log().contains("handover: macvtap up"), "\(daemons.b.log())")
                await daemons.a.stop()
                await daemons.b.stop()
            }
        }
    }

    @Test func coldMoveLeavesNothingBehindAndAttachesWhereTheVMStarts() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let first = try await launch(false, nil, Self.monitorPath(hosts, hosts.a))
                let daemons = try await Self.fleet(hosts)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemons.a.log())")
                #expect(try await Self.frameReaches(first, from: hosts.a, in: hosts))

                // Shut down on a (QEMU ends on SIGTERM with a SHUTDOWN event), started paused on b as
                // libvirt starts every VM: a keeps nothing, b attaches before the guest first runs.
                await first.stop()
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .vmNotRunning }, "\(daemons.a.log())")
                #expect(await Self.until { await Self.macvtaps(hosts, hosts.a).isEmpty }, "\(daemons.a.log())")
                let second = try await launch(true, nil, Self.monitorPath(hosts, hosts.b))
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .attached }, "\(daemons.b.log())")
                #expect(try await second.runState() == "prelaunch")
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.up) == [true])
                let client = try await second.monitor()
                try await client.execute("cont")
                await client.close()
                #expect(try await Self.frameReaches(second, from: hosts.b, in: hosts))
                #expect(await Self.macvtaps(hosts, hosts.a).isEmpty)
                await daemons.a.stop()
                await daemons.b.stop()
            }
        }
    }

    /// A daemon restarted on the source after handover finds its macvtap down and the backend
    /// kept: it adopts both as they are (no second macvtap, not brought up, no flap of the phase),
    /// and one restarted on the destination adopts the running VM's.
    @Test func daemonsRestartedAfterHandoverAdoptWhatTheyFind() async throws {
        try await TwoHosts.with { hosts in
            try await Self.withVMs { launch in
                let source = try await launch(false, nil, Self.monitorPath(hosts, hosts.a))
                var daemons = try await Self.fleet(hosts)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .attached }, "\(daemons.a.log())")
                let incoming = hosts.b.directory + "/incoming.sock"
                let destination = try await launch(false, incoming, Self.monitorPath(hosts, hosts.b))
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .migrating }, "\(daemons.b.log())")
                try await Self.migrate(source, to: incoming)
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .migratedAway }, "\(daemons.a.log())")
                #expect(await Self.until { hosts.phase("web1", on: hosts.b) == .attached }, "\(daemons.b.log())")
                let sourceMacvtaps = await Self.macvtaps(hosts, hosts.a)
                let destinationMacvtaps = await Self.macvtaps(hosts, hosts.b)

                await daemons.a.stop()
                await daemons.b.stop()
                daemons = (
                    try await hosts.launchDaemon(on: hosts.a, ["--log-level", "debug"]),
                    try await hosts.launchDaemon(on: hosts.b, ["--log-level", "debug"])
                )
                for (host, daemon) in [(hosts.a, daemons.a), (hosts.b, daemons.b)] {
                    #expect(
                        await Self.until {
                            let own = daemon.log()
                            return own.contains("QMP session with VM web1 established") && own.contains("reconciled:")
                        }, "\(host.name): \(daemon.log())")
                    #expect(!daemon.log().contains("VMUnreachable"), "adoption does not flap the phase")
                }
                #expect(hosts.phase("web1", on: hosts.a) == .migratedAway)
                #expect(hosts.phase("web1", on: hosts.b) == .attached)
                #expect(await Self.macvtaps(hosts, hosts.a).map(\.name) == sourceMacvtaps.map(\.name))
                #expect(await Self.macvtaps(hosts, hosts.a).map(\.up) == [false], "still out of a's MAC table")
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.name) == destinationMacvtaps.map(\.name))
                #expect(await Self.macvtaps(hosts, hosts.b).map(\.up) == [true])
                #expect(try await source.ourNetdevs().count == 2, "the source keeps its backend until QEMU exits")
                #expect(try await destination.ourNetdevs().count == 2, "no second backend")
                #expect(try await Self.frameReaches(destination, from: hosts.b, in: hosts))

                // And a daemon restarted while the VM does not run on its host creates nothing.
                await source.stop()
                #expect(await Self.until { await Self.macvtaps(hosts, hosts.a).isEmpty }, "\(daemons.a.log())")
                await daemons.a.stop()
                daemons.a = try await hosts.launchDaemon(on: hosts.a)
                #expect(await Self.until { daemons.a.log().contains("is not running here") }, "\(daemons.a.log())")
                #expect(await Self.until { hosts.phase("web1", on: hosts.a) == .vmNotRunning })
                #expect(await Self.macvtaps(hosts, hosts.a).isEmpty)
                await daemons.a.stop()
                await daemons.b.stop()
            }
        }
    }
}
