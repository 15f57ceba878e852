import Foundation
import Logging
import MacvtapdCore
import MacvtapdTestSupport
import Synchronization
import Testing

@testable import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

/// The tap fds macvtapd keeps open after an attach (`TapKeeper`), against the real kernel and QEMU:
/// QEMU's close of a backend's tap is not the last one, and each kept fd goes once QEMU no longer
/// holds the backend.
@Suite(.serialized) struct KeptTapTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:4b:00:00", hubID: 10)
    static let key = BindingKey(vm: "web1", nic: "nic0")

    static func tapFDs(_ pid: pid_t, in directory: String) -> Int {
        SoakProcess.tapFDs(pid, in: directory)
    }

    static func ourNetdevs(_ sandbox: Sandbox) async throws -> [String] {
        try await sandbox.network().netdevIDs.filter { $0.hasPrefix("mvtd.") }
    }

    static func phase(_ sandbox: Sandbox) -> Phase? {
        (try? sandbox.status())?.binding(key)?.phase
    }

    /// The executor in this process, with the real host driver, detaches a backend whose lower was
    /// deleted: when QEMU answers the netdev_del it has closed its copy of the tap and ours is
    /// still open, so QEMU's close was not the last (the one that waits out an RCU grace period
    /// inside QEMU's main loop before it answers). Ours goes after, off the executor's path.
    @Test func qemuClosesADeadBackendsTapWhileOursIsStillOpen() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            let sysfs = try NetworkNamespaceSysfs(of: sandbox.namespace)
            defer { sysfs.unmount() }
            let directory = sandbox.deviceDirectory
            let host = try sandbox.namespace.withEntered {
                try NetlinkHostDriver(deviceDirectory: directory, sysfsRoot: sysfs.path)
            }
            let qemu = sandbox.qemu.pid
            let connection = WitnessingConnection(
                try await QMPConnector(timeout: .seconds(5)).connect(vm: "web1", qmp: sandbox.qmpPath)
            ) {
                (qemu: Self.tapFDs(qemu, in: directory), ours: Self.tapFDs(getpid(), in: directory))
            }
            let executor = Executor(
                host: host, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            let lower = try #require(try await host.links().first { $0.name == "up0" })
            let name = Ownership.macvtapName(for: Self.key)
            let spec = MacvtapSpec(
                name: name, lowerIfindex: lower.ifindex, lowerName: "up0", mode: .bridge,
                mac: MACAddress(Self.nic0.mac)!, alias: Ownership.alias(for: Self.key))
            let attach = await executor.execute(
                BindingPlan(
                    key: Self.key, phase: .attached, reason: Reason("test", "attach"), change: .create,
                    actions: [.createMacvtap(spec), .attachBackend(vm: "web1", nic: "nic0", macvtap: name, hub: 10)]),
                host: ObservedHost(), connection: connection)
            #expect(attach.succeeded, "\(String(describing: attach.failure))")
            let backend = try #require(attach.attachedBackends.first)
            #expect(host.keptTaps(vm: "web1") == [backend.ids])
            #expect(Self.tapFDs(getpid(), in: directory) == 1, "ours kept")
            #expect(Self.tapFDs(qemu, in: directory) == 1, "QEMU's copy")

            try await sandbox.deleteLower("up0")
            let detach = await executor.execute(
                BindingPlan(
                    key: Self.key, phase: .hostMissing, reason: Reason("test", "detach"), change: .destroy,
                    actions: [.detachBackend(vm: "web1", backend: backend)]),
                host: ObservedHost(), connection: connection)
            #expect(detach.succeeded, "\(String(describing: detach.failure))")
            let seen = connection.seen.withLock { $0 }
            #expect(seen.count == 1 && seen.first?.qemu == 0, "QEMU closed its copy: \(seen)")
            #expect(seen.count == 1 && seen.first?.ours == 1, "ours was open when QEMU closed its copy: \(seen)")
            #expect(host.keptTaps(vm: "web1").isEmpty, "let go once QEMU answered")
            await host.tapsClosed()
            #expect(Self.tapFDs(getpid(), in: directory) == 0, "and closed")
            await connection.close()
        }
    }

    /// The daemon keeps one tap per attached backend and lets a flapped lower's go once its dead
    /// backend is detached; nothing accumulates over flaps.
    @Test func aFlappedLowersTapIsLetGoOnceItsBackendIsDetached() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let daemon = try await sandbox.launchDaemon()
            let directory = sandbox.deviceDirectory
            for flap in 0..<5 {
                #expect(
                    await eventually {
                        Self.phase(sandbox) == .attached && Self.tapFDs(daemon.pid, in: directory) == 1
                    },
                    "flap \(flap): one tap kept after the attach: \(daemon.log())")
                #expect(Self.tapFDs(sandbox.qemu.pid, in: directory) == 1, "flap \(flap): QEMU holds one")
                try await sandbox.deleteLower("up0")
                #expect(try await eventually { try await Self.ourNetdevs(sandbox).isEmpty }, "flap \(flap): detached")
                #expect(
                    await eventually { Self.tapFDs(daemon.pid, in: directory) == 0 },
                    "flap \(flap): the dead backend's tap is let go")
                try await sandbox.addLower("up0")
            }
            #expect(
                await eventually { Self.phase(sandbox) == .attached && Self.tapFDs(daemon.pid, in: directory) == 1 })
            #expect(await daemon.stop() == 0)
        }
    }

    /// A VM whose QEMU went away (its monitor's EOF, then nothing listening) no longer has the
    /// backend: the daemon lets its tap go instead of keeping the queue (and what the macvtap
    /// receives) alive; the restarted QEMU's backend gets a tap of its own, one in all.
    @Test func aQuitQEMUsTapIsLetGoAndTheRestartedOneGetsOne() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let daemon = try await sandbox.launchDaemon()
            let directory = sandbox.deviceDirectory
            #expect(await eventually { Self.tapFDs(daemon.pid, in: directory) == 1 }, "\(daemon.log())")
            for restart in 0..<3 {
                await sandbox.qemu.terminate()
                #expect(
                    await eventually { Self.tapFDs(daemon.pid, in: directory) == 0 },
                    "restart \(restart): QEMU gone, its tap let go")
                try await sandbox.restartQEMU()
                #expect(
                    try await eventually(within: .seconds(15)) { try await Self.ourNetdevs(sandbox).count == 2 },
                    "restart \(restart): \(daemon.log())")
                #expect(
                    await eventually { Self.tapFDs(daemon.pid, in: directory) == 1 }, "restart \(restart): one tap kept"
                )
            }
            #expect(try await sandbox.macvtaps().count == 1)
            #expect(await daemon.stop() == 0)
        }
    }

    /// A binding removed from the config is torn down, and its tap let go with its backend.
    @Test func aRemovedBindingsTapIsLetGo() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let daemon = try await sandbox.launchDaemon()
            let directory = sandbox.deviceDirectory
            #expect(await eventually { Self.tapFDs(daemon.pid, in: directory) == 1 }, "\(daemon.log())")
            try sandbox.writeConfig("version: 1\nvms: {}\n")
            #expect(try await eventually { try await Self.ourNetdevs(sandbox).isEmpty }, "\(daemon.log())")
            #expect(await eventually { Self.tapFDs(daemon.pid, in: directory) == 0 }, "let go with its backend")
            #expect(await daemon.stop() == 0)
        }
    }
}

/// A real QMP session that records, right after each exchange with a netdev_del in it was answered,
/// what `witness` sees (before the executor gets the answers).
final class WitnessingConnection: VMConnection {
    let base: any VMConnection
    let witness: @Sendable () -> (qemu: Int, ours: Int)
    let seen = Mutex<[(qemu: Int, ours: Int)]>([])

    init(_ base: any VMConnection, witness: @escaping @Sendable () -> (qemu: Int, ours: Int)) {
        self.base = base
        self.witness = witness
    }

    func perform(_ steps: [VMStep]) async throws -> [Result<Void, any Error>] {
        let results = try await base.perform(steps)
        if steps.contains(where: { if case .detach = $0 { true } else { false } }) {
            let now = witness()
            seen.withLock { $0.append(now) }
        }
        return results
    }

    func observe(vm: String) async throws -> ObservedVM { try await base.observe(vm: vm) }
    func observe(vm: String, guestMACOf nics: Set<String>) async throws -> ObservedVM {
        try await base.observe(vm: vm, guestMACOf: nics)
    }
    func attachBackend(_ ids: Ownership.BackendIDs, fd: Int32, hub: Int) async throws {
        try await base.attachBackend(ids, fd: fd, hub: hub)
    }
    func detachBackend(_ backend: ObservedBackend) async throws { try await base.detachBackend(backend) }
    func setLink(nic: String, up: Bool) async throws { try await base.setLink(nic: nic, up: up) }
    func announce(nic: String) async throws { try await base.announce(nic: nic) }
    func announce(nics: [String]) async throws { try await base.announce(nics: nics) }
    var events: AsyncStream<String> { base.events }
    func close() async { await base.close() }
}
