import MacvtapdCore
import MacvtapdTestSupport
import Synchronization
import Testing

extension GuestVMTests {
    /// A real Linux guest live-migrated between two hosts (TwoHosts: a network namespace per host,
    /// each eth0 cabled to one switch, a co-located client per host) with `macvtapd run` on both and
    /// the same desired state, while the switch and both co-located clients ping it (issue 12).
    /// Nested in `GuestVMTests`, whose `.serialized` covers nested suites: one TCG guest at a time.
    @Suite("Live migration of a real guest between two hosts")
    struct LiveMigrationTests {
        static let nic0 = GuestNIC(id: "nic0", hub: 10, mac: MACAddress("52:54:00:9d:00:10")!)
        static let guestAddress = "10.99.0.2"

        static var base: GuestConfiguration {
            var configuration = GuestConfiguration(nics: [nic0])
            configuration.addresses = ["eth0": guestAddress + "/24"]
            configuration.heartbeat = .milliseconds(10)
            return configuration
        }

        /// The monitor path each host's macvtapd is configured with: the same for every QEMU of the
        /// VM that runs on that host, as a fleet-wide desired state names it.
        static func monitor(on host: TwoHosts.Host) -> String { host.directory + "/guest.qmp" }

        /// Who pings the guest: the switch and the client co-located on each host.
        struct Clients {
            let names: [String]
            let pingers: [ICMPPinger]

            init(_ hosts: TwoHosts) async throws {
                names = ["switch", "client on a", "client on b"]
                var pingers: [ICMPPinger] = []
                for namespace in [hosts.network, hosts.a.client, hosts.b.client] {
                    pingers.append(try await ICMPPinger.open(target: LiveMigrationTests.guestAddress, in: namespace))
                }
                self.pingers = pingers
            }

            func close() { pingers.forEach { $0.close() } }

            /// Every client gets an answer from the guest.
            func reachGuest(within bound: Duration, _ what: String) async {
                for (name, pinger) in zip(names, pingers) {
                    let answered = await pinger.firstReplyInBackground(interval: .milliseconds(10), timeout: bound)
                    #expect(answered != nil, "\(name) does not reach the guest \(what)")
                }
            }
        }

        static func until(_ timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async rethrows
            -> Bool
        {
            try await eventually(within: timeout, condition)
        }

        @Test func guestMigratesAToBAndBackWithNoGapBeforeHandoverAndOneFDBMove() async throws {
            try await TwoHosts.with { hosts in
                for host in [hosts.a, hosts.b] {
                    try hosts.writeConfig(
                        TwoHosts.config(vm: "guest", qmp: Self.monitor(on: host), nics: ["nic0"]), on: host)
                }
                let daemonA = try await hosts.launchDaemon(on: hosts.a)
                let daemonB = try await hosts.launchDaemon(on: hosts.b)
                let fdb = try await FDBMonitor(in: hosts.network, logPath: hosts.directory.path + "/fdb.log")
                let launched = Launched()
                defer { launched.terminateAll() }
                let clients = try await Clients(hosts)
                defer { clients.close() }

                let first = try await GuestVM.launch(
                    LiveMigration.configuration(Self.base, monitor: Self.monitor(on: hosts.a)))
                launched.add(first)
                try await first.waitUntilReady(timeout: .seconds(60))
                #expect(await Self.until { hosts.phase("guest", on: hosts.a) == .attached }, "\(daemonA.log())")
                #expect(await Self.until { hosts.phase("guest", on: hosts.b) == .vmNotRunning }, "\(daemonB.log())")
                await clients.reachGuest(within: .seconds(10), "on host a")

                let context = Context(hosts: hosts, clients: clients, fdb: fdb, launched: launched)
                let onB = try await context.migrate(first, from: hosts.a, daemon: daemonA, to: hosts.b, daemon: daemonB)
                _ = try await context.migrate(onB, from: hosts.b, daemon: daemonB, to: hosts.a, daemon: daemonA)
                await fdb.stop()
            }
        }

        /// Every guest the test launched, terminated at its end even when it throws.
        final class Launched: Sendable {
            private let vms = Mutex<[GuestVM]>([])
            func add(_ vm: GuestVM) { vms.withLock { $0.append(vm) } }
            func terminateAll() { vms.withLock { $0.forEach { $0.terminate() } } }
        }

        struct Context {
            let hosts: TwoHosts
            let clients: Clients
            let fdb: FDBMonitor
            let launched: Launched
            static let counter = Atomic<Int>(0)

            /// One live migration with every client pinging the guest every 5 ms; returns the guest on
            /// its new host, after its source QEMU quit.
            func migrate(
                _ source: GuestVM, from: TwoHosts.Host, daemon sourceDaemon: BackgroundProcess,
                to: TwoHosts.Host, daemon destinationDaemon: BackgroundProcess
            ) async throws -> GuestVM {
                let route = "\(from.name)→\(to.name)"
                let mac = LiveMigrationTests.nic0.mac
                let portBefore = try await hosts.learnedPort(of: mac)
                #expect(portBefore == from.switchPort, "\(route): the switch knows the guest on its port")
                let sourceBeats = try ConsoleHeartbeat(consolePath: source.consolePath)
                defer { sourceBeats.stop() }

                let watchFrom = WallClock.now()
                let streams = clients.pingers.map { PingStream($0, interval: .milliseconds(5)) }
                let incoming =
                    hosts.directory.path + "/migrate-\(Self.counter.add(1, ordering: .relaxed).newValue).sock"
                let destination = try await GuestVM.launch(
                    LiveMigration.configuration(
                        LiveMigrationTests.base, monitor: LiveMigrationTests.monitor(on: to), incoming: incoming))
                launched.add(destination)
                let destinationBeats = try ConsoleHeartbeat(consolePath: destination.consolePath)
                defer { destinationBeats.stop() }

                // Before handover: the destination's backend is attached, its macvtap held down.
                #expect(
                    await LiveMigrationTests.until { hosts.phase("guest", on: to) == .migrating },
                    "\(route): \(destinationDaemon.log())")
                #expect(try await hosts.macvtaps(on: to).map(\.up) == [false], "\(route): out of the MAC table")
                // The clients keep pinging through the destination's wait.
                try await Task.sleep(for: .milliseconds(300))

                let record = try await LiveMigration.migrate(source, to: destination, incoming: incoming)

                // After handover: up where the guest runs, down (backend kept) where it ran.
                #expect(
                    await LiveMigrationTests.until { hosts.phase("guest", on: to) == .attached },
                    "\(route): \(destinationDaemon.log())")
                #expect(
                    await LiveMigrationTests.until { hosts.phase("guest", on: from) == .migratedAway },
                    "\(route): \(sourceDaemon.log())")
                #expect(try await hosts.macvtaps(on: to).map(\.up) == [true], "\(route)")
                #expect(try await hosts.macvtaps(on: from).map(\.up) == [false], "\(route): source held down")
                #expect(
                    await LiveMigrationTests.until { destinationBeats.times.contains { $0 > record.resumedAt } },
                    "\(route): the guest runs on \(to.name)")
                try await Task.sleep(for: .milliseconds(300))
                var echoes: [[PingStream.Echo]] = []
                for stream in streams { echoes.append(await stream.stop()) }

                // No client lost an echo before the source stopped for the handover (a reply may take
                // the guest a moment; half a second is patience, not a gap), and each heard the guest
                // again after it resumed on the destination.
                var report = "\(route): downtime \(record.downtime)"
                for (name, stream) in zip(clients.names, echoes) {
                    let early = PingStream.lost(
                        stream, sentBefore: record.sourceStoppedAt - 20_000, patience: .milliseconds(500))
                    #expect(early.isEmpty, "\(route): \(name) lost \(early.count) echoes before handover")
                    #expect(
                        stream.contains { ($0.replied ?? 0) > record.resumedAt },
                        "\(route): \(name) does not reach the guest on \(to.name)")
                    if let silence = PingStream.longestSilence(stream) {
                        report += ", \(name) \(Duration.wall(silence.to - silence.from))"
                    }
                }
                if let floor = ConsoleHeartbeat.silence(
                    across: record.sourceStoppedAt, before: sourceBeats.times, after: destinationBeats.times)
                {
                    report += ", guest heartbeat silence \(Duration.wall(floor.to - floor.from))"
                }
                print("migration: \(report)")
                await clients.reachGuest(within: .seconds(5), "after it moved to \(to.name)")

                // The switch learned the guest on the destination's port once, and only after handover.
                let moves = fdb.moves(of: mac, after: watchFrom, from: portBefore)
                #expect(moves.map(\.port) == [to.switchPort], "\(route): FDB moves \(moves)")
                #expect(moves.allSatisfy { $0.at > record.resumedAt }, "\(route): moved before RESUME \(moves)")
                #expect(try await hosts.learnedPort(of: mac) == to.switchPort)
                #expect(destinationDaemon.log().contains("handover: macvtap up"), "\(route)")

                // The source QEMU quits: nothing of the VM stays on its host.
                source.terminate()
                #expect(
                    await LiveMigrationTests.until { (try? await hosts.macvtaps(on: from))?.isEmpty == true },
                    "\(route): \(sourceDaemon.log())")
                #expect(
                    await LiveMigrationTests.until { hosts.phase("guest", on: from) == .vmNotRunning },
                    "\(route): \(sourceDaemon.log())")
                #expect(hosts.phase("guest", on: to) == .attached)
                return destination
            }
        }
    }
}
