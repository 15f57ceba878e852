import MacvtapdQMP

#if canImport(Glibc)
    import Glibc
#endif

/// The test guest (`GuestImage`, scripts/guest/init) as a domain of a `PrivateLibvirt`: kernel and
/// initramfs copied where the libvirt user's QEMU reads them, its serial console a file QEMU
/// appends to across starts (read by `console`), and a `<qemu:commandline>` fragment, which the
/// tests take from `macvtapd print libvirt-xml` unchanged. Nothing else in the domain is
/// macvtapd's. The private libvirtd's `stop()` destroys and undefines it.
public final class LibvirtGuest: Sendable {
    public let name: String
    public let libvirt: PrivateLibvirt
    public let console: GuestConsole

    /// Writes the domain XML and defines it (`virsh define`).
    public static func define(
        _ name: String, machine: String, configuration: GuestConfiguration, fragment: String,
        in libvirt: PrivateLibvirt
    ) async throws -> LibvirtGuest {
        let image = try await GuestImage.cached()
        var copies: [String] = []
        for file in [image.kernel, image.initramfs] {
            let copy = libvirt.home.path + "/" + (file.split(separator: "/").last.map(String.init) ?? "")
            let installed = try await ChildProcess.run(
                "/usr/bin/install", ["-o", PrivateLibvirt.user, "-m", "0644", file, copy])
            guard installed.status == 0 else { throw ChildError("install \(file): \(installed.stderr)") }
            copies.append(copy)
        }
        let consolePath = try libvirt.place("console-\(name).log", bytes: [])
        let xml = domainXML(
            name: name, machine: machine, kernel: copies[0], initramfs: copies[1], console: consolePath,
            configuration: configuration, fragment: fragment)
        let xmlPath = try libvirt.place("\(name).xml", bytes: Array(xml.utf8))
        let guest = LibvirtGuest(name: name, libvirt: libvirt, console: try GuestConsole(path: consolePath))
        try await guest.virshSucceeds(["define", xmlPath])
        return guest
    }

    private init(name: String, libvirt: PrivateLibvirt, console: GuestConsole) {
        self.name = name
        self.libvirt = libvirt
        self.console = console
    }

    /// A plain domain: TCG, 256 MiB, one vCPU, the guest kernel booted directly with the
    /// configuration's command line, the console to a file, ACPI when the guest handles the power
    /// button (libvirt's `virsh reboot` and `shutdown` press it), and a reboot that restarts it.
    public static func domainXML(
        name: String, machine: String, kernel: String, initramfs: String, console: String,
        configuration: GuestConfiguration, fragment: String
    ) -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <memory unit='MiB'>256</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='\(machine)'>hvm</type>
            <kernel>\(kernel)</kernel>
            <initrd>\(initramfs)</initrd>
            <cmdline>\(configuration.kernelCommandLine)</cmdline>
          </os>
          \(configuration.powerButton ? "<features><acpi/></features>" : "")
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <serial type='file'><source path='\(console)' append='on'/><target port='0'/></serial>
          </devices>
        \(fragment)
        </domain>
        """
    }

    /// `virsh ARGUMENTS` against the private libvirtd, whatever its outcome.
    public func virsh(_ arguments: [String]) async throws -> ChildResult { try await libvirt.virsh(arguments) }

    /// `virsh ARGUMENTS`; throws with virsh's error unless it succeeds. Returns its output.
    @discardableResult
    public func virshSucceeds(_ arguments: [String]) async throws -> String {
        let result = try await libvirt.virsh(arguments)
        guard result.status == 0 else {
            throw ChildError("virsh \(arguments.joined(separator: " ")): \(result.stderr)\(result.stdout)")
        }
        return result.stdout
    }

    /// `virsh start` (or `start --paused`), then, unless paused, waits for the guest's next `GUEST
    /// READY`. The boot runs alone in the process (`GuestBootGate`), like every test guest's.
    public func start(paused: Bool = false, readyTimeout: Duration = .seconds(30)) async throws {
        if paused {
            try await virshSucceeds(["start", name, "--paused"])
            return
        }
        try await booting(readyTimeout: readyTimeout) { try await self.virshSucceeds(["start", self.name]) }
    }

    /// Runs `action` (a start, resume, reboot or reset) and waits for the boot it causes to end at the
    /// guest's next `GUEST READY`, as the only boot in the process.
    public func booting(readyTimeout: Duration = .seconds(30), _ action: @Sendable () async throws -> Void)
        async throws
    {
        let mark = console.lines.count
        try await GuestBootGate.shared.whileBooting {
            try await action()
            try await console.waitForLine("GUEST READY", from: mark, timeout: readyTimeout)
        }
    }

    /// `virsh event` for the domain's lifecycle events, with timestamps, left running: its output
    /// goes to `logPath`. It needs a moment to connect before the events it should see.
    public func lifecycleEvents(logPath: String) throws -> BackgroundProcess {
        try libvirt.startVirsh(
            ["event", "--domain", name, "--event", "lifecycle", "--loop", "--timestamp"], logPath: logPath)
    }

    /// When (seconds since the epoch) libvirt reported the domain `Started` — it has resumed the
    /// CPUs of the QEMU it started with -S — in `lifecycleEvents` output, whose lines read
    /// `2026-12-06 22:17:23.457+0000: event 'lifecycle' for domain 'lv': Started Booted`.
    public static func startedTime(inEvents log: String) -> Double? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("lifecycle") && $0.contains("Started") })
        else { return nil }
        let numbers = line.prefix(23).split(whereSeparator: { "-: .".contains($0) }).compactMap { Int($0) }
        guard numbers.count == 7 else { return nil }
        var parts = tm()
        parts.tm_year = Int32(numbers[0] - 1900)
        parts.tm_mon = Int32(numbers[1] - 1)
        parts.tm_mday = Int32(numbers[2])
        parts.tm_hour = Int32(numbers[3])
        parts.tm_min = Int32(numbers[4])
        parts.tm_sec = Int32(numbers[5])
        return Double(timegm(&parts)) + Double(numbers[6]) / 1000
    }

    /// The run state libvirt reports (`running`, `paused`, `shut off`, ...).
    public func state() async throws -> String {
        String(try await virshSucceeds(["domstate", name]).filter { !$0.isNewline })
    }

    /// A QMP command through libvirt's own monitor (`virsh qemu-monitor-command`), for the test's
    /// checks while macvtapd holds the monitor the fragment adds. libvirt marks the domain tainted.
    public func qmp(_ command: String) async throws -> String {
        try await virshSucceeds(["qemu-monitor-command", name, command])
    }

    /// `info network` through libvirt's monitor.
    public func network() async throws -> NetworkInfo {
        try NetworkInfo(parsing: try await virshSucceeds(["qemu-monitor-command", name, "--hmp", "info network"]))
    }
}
