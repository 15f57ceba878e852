import MacvtapdCore
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A real guest defined in a real libvirt (9.0, Debian's, a private session-mode libvirtd) from
/// `macvtapd print libvirt-xml`, with nothing else macvtapd-specific in the domain, managed by
/// `macvtapd run`: starting on both machine types, then the VM's life under libvirt (host
/// interface flap, suspend/resume, reboot, save/restore, destroy, start, undefine). Each test boots
/// its guest once (TCG boots cost seconds) and chains its checks on that domain.
@Suite(.serialized) struct LibvirtTests {
    static let guestMAC = "52:54:00:7e:00:21"

    /// What every test shares: the switch and host interface `up0` (`GuestSandbox` without a guest
    /// of its own), a private libvirtd, the desired state binding nic0 of VM `name` to up0 with its
    /// monitor in the libvirt user's home, the fragment `print libvirt-xml` made from it, and
    /// `macvtapd run`.
    struct Rig {
        let sandbox: GuestSandbox
        let libvirt: PrivateLibvirt
        let name: String
        let fragment: String
        let daemon: BackgroundProcess
        var key: BindingKey { BindingKey(vm: name, nic: "nic0") }

        func binding() -> BindingStatus? { (try? sandbox.status())??.binding(key) }

        /// Waits for the binding's phase; false after `timeout`.
        func reaches(_ phase: Phase, within timeout: Duration = .seconds(20)) async -> Bool {
            await eventually(within: timeout) { binding()?.phase == phase }
        }

        /// The guest (10.99.0.2) answers an echo from the switch within `timeout`.
        func guestAnswers(within timeout: Duration = .seconds(15)) async throws -> Bool {
            let pinger = try await sandbox.makePinger()
            defer { pinger.close() }
            return await pinger.firstReplyInBackground(interval: .milliseconds(100), timeout: timeout) != nil
        }

        /// The daemon's log lines about the binding since line `mark`: every action and phase change
        /// names it; nothing there means macvtapd changed nothing.
        func bindingLog(since mark: Int) -> [Substring] {
            daemon.log().split(separator: "\n").dropFirst(mark).filter { $0.contains("binding=\(name)/nic0") }
        }

        var logLines: Int { daemon.log().split(separator: "\n").count }

        func define(
            machine: String, configuration: GuestConfiguration, fragment: String? = nil, as domain: String? = nil
        )
            async throws -> LibvirtGuest
        {
            try await LibvirtGuest.define(
                domain ?? name, machine: machine, configuration: configuration, fragment: fragment ?? self.fragment,
                in: libvirt)
        }
    }

    static func withRig(_ name: String, _ body: (Rig) async throws -> Void) async throws {
        try await GuestSandbox.with(lowers: ["up0"]) { sandbox in
            try await PrivateLibvirt.with { libvirt in
                try sandbox.writeConfig(
                    """
                    version: 1
                    defaults:
                      qmp: \(libvirt.home.path)/{vm}.qmp
                    vms:
                      \(name):
                        nics:
                          nic0: {host: up0, mac: "\(Self.guestMAC)"}

                    """)
                let print = try await ChildProcess.run(
                    sandbox.binary, ["print", "libvirt-xml", name, "-c", sandbox.configPath])
                guard print.status == 0 else { throw ChildError("print libvirt-xml: \(print.stderr)") }
                let daemon = try await sandbox.launchDaemon()
                try await body(
                    Rig(sandbox: sandbox, libvirt: libvirt, name: name, fragment: print.stdout, daemon: daemon))
                await daemon.stop()
            }
        }
    }

    /// The guest's address on the switch's subnet; ACPI power button handling when asked.
    static func configuration(powerButton: Bool = false) -> GuestConfiguration {
        var configuration = GuestConfiguration(nics: [])
        configuration.addresses = ["eth0": "10.99.0.2/24"]
        configuration.powerButton = powerButton
        return configuration
    }

    /// Whether the guest saw a NIC vanish or appear since console line `mark` (a PCI hot-unplug or
    /// plug, which macvtapd must never cause), or booted again (which only a reboot may).
    static func nicEvents(_ guest: LibvirtGuest, since mark: Int) -> [String] {
        guest.console.lines.dropFirst(mark).filter {
            $0.hasPrefix("GUEST GONE") || $0.hasPrefix("GUEST NIC") || $0 == "GUEST READY"
        }
    }

    /// Without the print's PCI placement libvirt fails to start such a domain: QEMU puts the NIC on a
    /// slot libvirt gave its own root port (q35) or balloon (i440fx).
    @Test(arguments: ["q35", "pc"])
    func aDomainFromPrintLibvirtXMLStartsAndItsGuestAnswersThroughMacvtapd(_ machine: String) async throws {
        try await Self.withRig("lv-\(machine)") { rig in
            // The same domain with the NIC left for QEMU to place does not start under libvirt.
            let unplaced = try await rig.define(
                machine: machine, configuration: Self.configuration(),
                fragment: rig.fragment.replacing(",addr=0x1e", with: ""), as: rig.name + "-unplaced")
            let refused = try await unplaced.virsh(["start", unplaced.name])
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("not available"), "\(refused.stderr)")

            // libvirt starts QEMU with -S and resumes it once its own set-up is done (about half a
            // second): the backend is attached before that, so the guest's first frames go out.
            let guest = try await rig.define(machine: machine, configuration: Self.configuration())
            let events = try guest.lifecycleEvents(logPath: rig.sandbox.directory.path + "/events.log")
            defer { Task { await events.stop() } }
            try await Task.sleep(for: .milliseconds(300))
            try await guest.start()
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            await events.stop()
            let started = try #require(LibvirtGuest.startedTime(inEvents: events.log()), "\(events.log())")
            let attached = try #require(rig.binding()?.since)
            #expect(attached < started, "attached \(attached - started) s after libvirt resumed the guest's CPUs")
            #expect(guest.console.nicIdentity("eth0")?.mac.description == Self.guestMAC, "\(guest.console.lines)")
            #expect(try await rig.guestAnswers(), "the guest answers through macvtapd's backend")

            // virsh destroy ends QEMU: nothing of the VM stays on the host.
            try await guest.virshSucceeds(["destroy", guest.name])
            #expect(
                try await eventually(within: .seconds(10)) { try await rig.sandbox.macvtaps().isEmpty },
                "\(rig.daemon.log())")
            #expect(await rig.reaches(.vmNotRunning, within: .seconds(10)))
        }
    }

    /// One booted domain through a host interface flap, `virsh suspend`/`resume` and `virsh reboot`.
    /// The flap replaces the backend under the same guest NIC; suspend, resume and reboot change
    /// nothing on the host: same macvtap, same backend, no action by macvtapd.
    ///
    /// `virsh reboot` is libvirt's default (ACPI) mode: libvirt presses the power button
    /// (`system_powerdown`), the guest powers off, QEMU (run with -no-shutdown) stops in `shutdown`,
    /// and libvirt resets and continues the same QEMU: a "fake reboot". The test guest handles the
    /// button (`GuestConfiguration.powerButton`, ACPI on in the domain); the agent mode needs a guest
    /// agent it does not have.
    @Test func aGuestKeepsItsNICThroughAHostInterfaceFlapSuspendResumeAndReboot() async throws {
        try await Self.withRig("lv-life") { rig in
            let guest = try await rig.define(machine: "q35", configuration: Self.configuration(powerButton: true))
            try await guest.start()
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            #expect(try await rig.guestAnswers(), "the guest answers after virsh start")
            let identity = try #require(guest.console.nicIdentity("eth0"), "\(guest.console.lines)")
            #expect(identity.mac.description == Self.guestMAC)
            let qomMAC = try await guest.qmp(
                #"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/nic0","property":"mac"}}"#)
            #expect(qomMAC.contains(Self.guestMAC), "\(qomMAC)")

            // The host interface goes and comes back: the guest sees carrier down and up on the same
            // NIC, and a new backend (a new macvtap) behind it.
            let before = try await rig.sandbox.macvtaps()
            #expect(before.count == 1)
            var mark = guest.console.lines.count
            try await rig.sandbox.deleteLower("up0")
            try await guest.console.waitForCarrier(interface: "eth0", up: false)
            #expect(await rig.reaches(.hostMissing), "\(rig.daemon.log())")
            #expect(try await rig.sandbox.macvtaps().isEmpty)
            try await rig.sandbox.addLower("up0")
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            try await guest.console.waitForCarrier(interface: "eth0", up: true)
            #expect(try await rig.guestAnswers(), "the guest answers after the host interface returned")
            #expect(Self.nicEvents(guest, since: mark).isEmpty, "no NIC went or came: \(guest.console.lines)")
            #expect(guest.console.nicIdentity("eth0") == identity)
            let network = try await guest.network()
            #expect(network.nics.map(\.id) == ["nic0"], "QEMU still has the one NIC: \(network)")
            let macvtaps = try await rig.sandbox.macvtaps()
            #expect(macvtaps.count == 1 && macvtaps.allSatisfy(\.up), "\(macvtaps)")
            #expect(macvtaps.map(\.ifindex) != before.map(\.ifindex), "a new macvtap after the flap")

            // Suspend and resume: the VM stays here, so macvtapd does nothing at all.
            let attached = try #require(rig.binding())
            let backends = network.netdevIDs.filter { $0.hasPrefix("mvtd.") }
            #expect(backends.count == 2, "the backend's tap and hubport: \(network.netdevIDs)")
            func unchanged(_ moment: String, since logMark: Int) async throws {
                #expect(try await rig.sandbox.macvtaps().map(\.ifindex) == macvtaps.map(\.ifindex), "\(moment)")
                #expect(try await rig.sandbox.macvtaps().allSatisfy(\.up), "\(moment)")
                #expect(
                    try await guest.network().netdevIDs.filter { $0.hasPrefix("mvtd.") } == backends, "\(moment)")
                #expect(rig.binding()?.phase == .attached && rig.binding()?.since == attached.since, "\(moment)")
                #expect(rig.bindingLog(since: logMark).isEmpty, "\(moment): \(rig.bindingLog(since: logMark))")
            }
            var logMark = rig.logLines
            try await guest.virshSucceeds(["suspend", guest.name])
            #expect(try await guest.state() == "paused")
            // The daemon hears STOP and looks again; give it the time it takes to act, if it would.
            try await Task.sleep(for: .milliseconds(500))
            try await unchanged("suspended", since: logMark)
            try await guest.virshSucceeds(["resume", guest.name])
            #expect(try await guest.state() == "running")
            try await Task.sleep(for: .milliseconds(500))
            try await unchanged("resumed", since: logMark)
            #expect(try await rig.guestAnswers(), "the guest answers after resume")

            // Reboot: the same QEMU (same domain id) resets; the guest boots again with its NIC.
            let id = try await guest.virshSucceeds(["domid", guest.name])
            mark = guest.console.lines.count
            logMark = rig.logLines
            try await guest.booting { try await guest.virshSucceeds(["reboot", guest.name, "--mode", "acpi"]) }
            #expect(
                guest.console.lines.dropFirst(mark).contains("GUEST POWER BUTTON"),
                "the guest powered off: \(guest.console.lines.dropFirst(mark))")
            #expect(try await guest.virshSucceeds(["domid", guest.name]) == id, "the same QEMU")
            #expect(guest.console.nicIdentity("eth0")?.mac == identity.mac)
            #expect(!guest.console.lines.dropFirst(mark).contains { $0.hasPrefix("GUEST GONE") })
            try await unchanged("rebooted", since: logMark)
            #expect(try await rig.guestAnswers(), "the guest answers after the reboot")
            try await unchanged("answering after the reboot", since: logMark)
        }
    }

    /// One domain through `virsh start --paused`, `save`, `restore`, `destroy`, `start` and
    /// `undefine`: the backend is attached before the guest first runs; a VM whose QEMU exits (save,
    /// destroy) loses its macvtap, as any QEMU that exits does; the restore starts a QEMU that waits
    /// for the saved state (`-incoming`), which macvtapd attaches as a migration's destination; an
    /// undefined domain leaves nothing, though its binding stays in the desired state.
    @Test func aGuestIsAttachedAcrossSaveRestoreDestroyStartAndUndefine() async throws {
        try await Self.withRig("lv-save") { rig in
            let guest = try await rig.define(machine: "pc", configuration: Self.configuration())
            // libvirt starts QEMU with -S; --paused leaves it so: attached before the guest ever runs.
            try await guest.start(paused: true)
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            #expect(try await guest.state() == "paused")
            #expect(guest.console.lines.isEmpty, "the guest has not run: \(guest.console.lines)")
            #expect(try await rig.sandbox.macvtaps().map(\.up) == [true])
            try await guest.booting { try await guest.virshSucceeds(["resume", guest.name]) }
            #expect(try await rig.guestAnswers(), "the guest answers")
            let identity = try #require(guest.console.nicIdentity("eth0"))

            // Save: libvirt migrates the VM into a file and QEMU exits; its macvtap goes with it.
            let file = guest.libvirt.home.path + "/\(guest.name).save"
            let mark = guest.console.lines.count
            var logMark = rig.logLines
            try await guest.virshSucceeds(["save", guest.name, file])
            #expect(try await guest.state() == "shut off")
            #expect(try await eventually(within: .seconds(10)) { try await rig.sandbox.macvtaps().isEmpty })
            #expect(await rig.reaches(.vmNotRunning, within: .seconds(10)), "\(rig.daemon.log())")
            logMark = rig.logLines

            // Restore: a QEMU with -incoming reads the file; macvtapd attaches it as a destination
            // (Migrating, macvtap down) and brings it up when the guest resumes. The guest goes on
            // where it was: no new boot, same NIC.
            try await guest.virshSucceeds(["restore", file])
            #expect(try await guest.state() == "running")
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            #expect(try await rig.guestAnswers(), "the guest answers after the restore")
            let restored = try await rig.sandbox.macvtaps()
            #expect(restored.count == 1 && restored.allSatisfy(\.up), "exactly one macvtap: \(restored)")
            #expect(
                rig.bindingLog(since: logMark).contains { $0.contains("-> Migrating") },
                "the restore took the incoming-migration path: \(rig.bindingLog(since: logMark))")
            #expect(Self.nicEvents(guest, since: mark).isEmpty, "\(guest.console.lines.dropFirst(mark))")
            #expect(guest.console.nicIdentity("eth0") == identity)

            // Destroy, then start again.
            try await guest.virshSucceeds(["destroy", guest.name])
            #expect(try await eventually(within: .seconds(10)) { try await rig.sandbox.macvtaps().isEmpty })
            #expect(await rig.reaches(.vmNotRunning, within: .seconds(10)))
            try await guest.start(paused: true)
            #expect(await rig.reaches(.attached), "\(rig.daemon.log())")
            #expect(try await rig.sandbox.macvtaps().count == 1)

            // Undefine: libvirt keeps the running domain as a transient one, and macvtapd its backend;
            // once it is destroyed, libvirt forgets it and nothing of it is left on the host.
            try await guest.virshSucceeds(["undefine", guest.name])
            #expect(try await rig.sandbox.macvtaps().count == 1, "the VM still runs")
            logMark = rig.logLines
            try await guest.virshSucceeds(["destroy", guest.name])
            #expect(try await guest.virsh(["dominfo", guest.name]).status != 0, "libvirt forgot the domain")
            #expect(try await eventually(within: .seconds(10)) { try await rig.sandbox.macvtaps().isEmpty })
            #expect(await rig.reaches(.vmNotRunning, within: .seconds(10)))
            #expect(rig.binding()?.lastError == nil, "\(String(describing: rig.binding()))")
            // The daemon goes on: a VM that is not running is no error, and it says so in one line.
            try await Task.sleep(for: .milliseconds(500))
            #expect(rig.daemon.endedStatus == nil, "the daemon still runs")
            #expect(!rig.daemon.log().split(separator: "\n").dropFirst(logMark).contains { $0.contains(" error ") })
        }
    }
}
