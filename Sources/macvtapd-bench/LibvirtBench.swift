import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdReconciler
import MacvtapdTestSupport

struct LibvirtBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "libvirt",
        abstract: "A guest under libvirt beside a plain QEMU: recovery after a host-interface flap; start → attached.",
        discussion: """
            The test guest as a libvirt domain (a private session-mode libvirtd, as LibvirtTests run
            it) defined from `macvtapd print libvirt-xml`, beside the same guest in a plain QEMU
            (GuestSandbox), both managed by one `macvtapd run` with events; the switch is the bridge
            of `macvtapd-bench guest`.
            - flap: host interface up0 is deleted, the guest reports carrier down, up0 returns with
              carrier at once (one `ip -batch`); from the RTM_NEWLINK that announces it to the first
              echo reply, an echo every millisecond (the method of `macvtapd-bench guest`).
            - start: `virsh start` of the defined domain, and for comparison the spawn of a plain
              `qemu-system-x86_64 -S` with the arguments of `macvtapd print qemu-args`; from the
              command's start to the status file saying Attached (polled every millisecond), and
              the part of it from the monitor socket's appearance to Attached (the daemon's
              reconnect wait: the VM was stopped 2 s before, so the wait is at its 1 s cap). For
              libvirt also to its lifecycle event Started (libvirt ran `cont`), as `virsh event`
              receives it: the backend is attached before the guest runs only when Attached comes
              first.
            """)

    @Option(help: "Host interface flaps per launcher.") var flaps = 10
    @Option(help: "Starts per launcher.") var starts = 10

    static let libvirtNIC = GuestNIC(id: "nic0", hub: 0, mac: MACAddress("52:54:00:9b:00:21")!)
    static let plainMAC = MACAddress("52:54:00:9b:00:22")!
    static let domain = "lvbench"

    func run() async throws {
        print(
            "libvirt: \(flaps) host interface flaps and \(starts) starts with libvirt (Debian's 9.0, a private "
                + "session-mode libvirtd) and with a plain QEMU; load average \(loadAverage())")
        let libvirt = try await measureLibvirt()
        let plainFlaps = try await GuestBench.measureReconnect(flaps: flaps, daemonArguments: []).samples
        print("load average after: \(loadAverage())")
        print(ResultRow.header("libvirt", "plain QEMU"))
        print(
            ResultRow(
                measure: "host interface returns with carrier at once (RTM_NEWLINK) → guest answers ping",
                macvtapd: LatencySummary(libvirt.flaps), baseline: LatencySummary(plainFlaps), target: "", ratio: false
            ).markdown)
        print(
            ResultRow(
                measure: "`virsh start` / spawn of `qemu -S` → status Attached",
                macvtapd: LatencySummary(libvirt.starts.map(\.attached)),
                baseline: LatencySummary(libvirt.plainStarts.map(\.attached)), target: "", ratio: false
            ).markdown)
        print(
            ResultRow(
                measure: "… of which monitor socket created → Attached (the daemon's reconnect wait)",
                macvtapd: LatencySummary(libvirt.starts.map { $0.attached - $0.socket }),
                baseline: LatencySummary(libvirt.plainStarts.map { $0.attached - $0.socket }), target: "", ratio: false
            ).markdown)
        let started = libvirt.starts.compactMap(\.started)
        print(
            ResultRow(
                measure: "`virsh start` → libvirt's lifecycle event Started (guest CPUs running)",
                macvtapd: started.isEmpty ? nil : LatencySummary(started), baseline: nil, target: "", ratio: false
            ).markdown)
        let before = libvirt.starts.filter { start in start.started.map { start.attached < $0 } ?? false }.count
        print(
            "\nAttached before libvirt's Started event (the guest's first frames go out through macvtapd): "
                + "\(before) of \(libvirt.starts.count) starts")
    }

    /// One start: from the command to the monitor socket existing, to Attached, to libvirt's Started event.
    struct StartSample {
        var socket: Duration
        var attached: Duration
        var started: Duration?
    }

    func measureLibvirt() async throws -> (flaps: [Duration], starts: [StartSample], plainStarts: [StartSample]) {
        try await GuestSandbox.with(lowers: ["up0"]) { sandbox in
            try await PrivateLibvirt.with { libvirt in
                let libvirtQMP = libvirt.home.path + "/\(Self.domain).qmp"
                let libvirtVM = """
                      \(Self.domain):
                        qmp: \(libvirtQMP)
                        nics:
                          nic0: {host: up0, mac: "\(Self.libvirtNIC.mac)"}

                    """
                try sandbox.writeConfig("version: 1\nvms:\n" + libvirtVM)
                let fragment = try await Self.printed(sandbox, ["print", "libvirt-xml", Self.domain])
                var configuration = GuestConfiguration(nics: [])
                configuration.addresses = ["eth0": "10.99.0.2/24"]
                let guest = try await LibvirtGuest.define(
                    Self.domain, machine: "q35", configuration: configuration, fragment: fragment, in: libvirt)
                let daemon = try sandbox.startDaemon()
                try await guest.start()
                try await sandbox.waitForPhase(.attached, bindings: 1)
                let flapSamples = try await GuestBench.reconnectRounds(
                    flaps, sandbox: sandbox, guest: guest.console, nic: Self.libvirtNIC, daemon: daemon,
                    carrierLater: false
                ).samples
                print("reconnect libvirt: \(LatencySummary(flapSamples))")
                try await guest.virshSucceeds(["destroy", Self.domain])

                // Both VMs in one desired state, started in turn.
                let plainQMP = sandbox.directory.path + "/plain.qmp"
                try sandbox.writeConfig(
                    "version: 1\nvms:\n" + libvirtVM
                        + "  plain:\n    qmp: \(plainQMP)\n    nics:\n      nic0: {host: up0, mac: \"\(Self.plainMAC)\"}\n"
                )
                try await sandbox.waitForPhase(.vmNotRunning, bindings: 2)
                let qemuArguments = try await Self.printed(sandbox, ["print", "qemu-args", "plain"])
                    .split(separator: "\n").map(String.init)
                var starts: [StartSample] = []
                var plainStarts: [StartSample] = []
                for round in 0..<self.starts {
                    starts.append(
                        try await Self.measureStart(
                            sandbox: sandbox, vm: Self.domain, qmp: libvirtQMP,
                            events: guest.lifecycleEvents(logPath: sandbox.directory.path + "/events-\(round).log")
                        ) {
                            try await guest.virshSucceeds(["start", Self.domain])
                            return nil
                        } stop: { _ in
                            try await guest.virshSucceeds(["destroy", Self.domain])
                        })
                    plainStarts.append(
                        try await Self.measureStart(sandbox: sandbox, vm: "plain", qmp: plainQMP, events: nil) {
                            try BackgroundProcess.start(
                                "/usr/bin/qemu-system-x86_64",
                                ["-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "128", "-S"]
                                    + qemuArguments,
                                logPath: sandbox.directory.path + "/plain-qemu.log")
                        } stop: { qemu in
                            await qemu?.stop()
                        })
                }
                await daemon.stop()
                return (flapSamples, starts, plainStarts)
            }
        }
    }

    static func printed(_ sandbox: GuestSandbox, _ arguments: [String]) async throws -> String {
        let result = try await ChildProcess.run(sandbox.binary, arguments + ["-c", sandbox.configPath])
        guard result.status == 0 else {
            throw ChildError("macvtapd \(arguments.joined(separator: " ")): \(result.stderr)")
        }
        return result.stdout
    }

    /// Waits 2 s with the VM stopped (the daemon's reconnect wait reaches its cap), runs `start` (which
    /// returns the QEMU it spawned, if it did) without waiting for it, and polls every millisecond for the monitor socket and the binding's
    /// Attached; then `stop`s the VM and waits for VMNotRunning. `events`, a `virsh event` left
    /// running, gives the Started event's time.
    static func measureStart(
        sandbox: GuestSandbox, vm: String, qmp: String, events: BackgroundProcess?,
        start: @escaping @Sendable () async throws -> BackgroundProcess?,
        stop: (BackgroundProcess?) async throws -> Void
    ) async throws -> StartSample {
        func phase() -> Phase? {
            (try? sandbox.status())??.bindings.first { $0.vm == vm }?.phase
        }
        try await Task.sleep(for: .seconds(2))
        let wallStart = Date().timeIntervalSince1970
        let begin = ContinuousClock.now
        let starting = Task { try await start() }
        var socket: ContinuousClock.Instant?
        var attached: ContinuousClock.Instant?
        while attached == nil, ContinuousClock.now - begin < .seconds(20) {
            if socket == nil, access(qmp, F_OK) == 0 { socket = .now }
            if phase() == .attached { attached = .now }
            try await Task.sleep(for: .milliseconds(1))
        }
        try await stop(try await starting.value)
        guard await eventually(within: .seconds(10), { phase() == .vmNotRunning }) else {
            throw ChildError("\(vm) did not stop")
        }
        var started: Duration?
        if let events {
            await events.stop()
            started = LibvirtGuest.startedTime(inEvents: events.log()).map {
                .milliseconds(Int64(($0 - wallStart) * 1000))
            }
        }
        guard let socket, let attached else { throw ChildError("\(vm) was not attached within 20 s") }
        return StartSample(socket: socket - begin, attached: attached - begin, started: started)
    }

    func loadAverage() -> String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "")
            .split(separator: " ").prefix(3).joined(separator: " ")
    }
}
