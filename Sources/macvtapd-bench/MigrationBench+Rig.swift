import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdReconciler
import MacvtapdTestSupport

/// The two hosts, the guest's QEMUs and whoever manages their macvtaps.
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
                // The rig's process ends with the run: nothing would let a kept fd go.
                try await drivers[host.name]!.withOpenTap(
                    ifindex: macvtap.ifindex, name: macvtap.name, for: VMBackend(vm: "guest", ids: ids)
                ) { fd in
                    (try await connection.attachBackend(ids, fd: fd, hub: MigrationBench.nic0.hub), handedOver: false)
                }
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
        }
    }
}
