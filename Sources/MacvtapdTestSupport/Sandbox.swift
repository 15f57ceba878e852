import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// An end-to-end sandbox: a network namespace whose veth pairs stand in for host interfaces, a
/// real QEMU whose NICs sit on hubs with a probe on each hub (DESIGN.md), and the `macvtapd`
/// binary run inside the namespace exactly as an operator runs it on a host.
public final class Sandbox: Sendable {
    public let namespace: NetworkNamespace
    /// The VM; replaced by `restartQEMU()`. A sandbox started with no NICs has none (the soak
    /// runs VMs of its own): asking for it then is a test's bug.
    public var qemu: QEMUProcess { vm.withLock { $0! } }
    private let vm: Mutex<QEMUProcess?>
    /// The macvtapd processes `start` left running, stopped by `cleanup` if the test did not.
    private let children = Mutex<[BackgroundProcess]>([])
    private let paused: Bool
    public let nics: [QEMUNIC]
    /// NIC id → the probe on that NIC's hub.
    public let probes: [String: Probe]
    public let directory: TemporaryDirectory
    public let binary: String

    public var configPath: String { directory.path + "/macvtapd.yaml" }
    public var statusPath: String { directory.path + "/status.json" }
    public var deviceDirectory: String { directory.path + "/dev" }
    /// The daemon's control socket; its directory is the run directory (one daemon per directory).
    public var controlSocketPath: String { directory.path + "/run/control.sock" }
    /// A second QMP monitor for the test's own checks (macvtapd holds the first).
    public var testMonitorPath: String { qemu.additionalMonitorPaths[0] }

    /// Runs `body` with a fresh sandbox and always cleans it up afterwards, even when `body` throws.
    public static func with<Result>(
        nics: [QEMUNIC], lowers: [String], paused: Bool = false, _ body: (Sandbox) async throws -> Result
    ) async throws -> Result {
        try await withCleanup(
            try await start(nics: nics, lowers: lowers, paused: paused), cleanup: { await $0.cleanup() }, body)
    }

    /// Host interfaces `lowers` (each a veth whose peer is `<name>p`, both up) and a VM `vm` with
    /// `nics`; no VM when `nics` is empty.
    public static func start(nics: [QEMUNIC], lowers: [String], paused: Bool = false) async throws -> Sandbox {
        let namespace = try await NetworkNamespace(prefix: "mvte2e")
        do {
            for lower in lowers { try await addLower(lower, in: namespace) }
            let probes = try Dictionary(uniqueKeysWithValues: nics.map { ($0.id, try Probe()) })
            let qemu =
                nics.isEmpty
                ? nil
                : try await QEMUProcess.launch(
                    QEMUOptions(
                        nics: nics, probes: nics.map { (probes[$0.id]!, $0.hubID) }, paused: paused,
                        additionalMonitors: ["test.qmp"]))
            return try Sandbox(namespace: namespace, qemu: qemu, nics: nics, probes: probes, paused: paused)
        } catch {
            try? await namespace.remove()
            throw error
        }
    }

    private init(
        namespace: NetworkNamespace, qemu: QEMUProcess?, nics: [QEMUNIC], probes: [String: Probe], paused: Bool
    ) throws {
        self.namespace = namespace
        vm = Mutex(qemu)
        self.paused = paused
        self.nics = nics
        self.probes = probes
        directory = try TemporaryDirectory()
        binary = try ChildProcess.macvtapdBinary()
        if let qemu { try pointQMPLink(at: qemu) }
    }

    /// The QMP path the config names: a symlink to the running QEMU's socket, so a restarted VM
    /// answers on the same path, as a VM restarted by libvirt or systemd does.
    public var qmpPath: String { directory.path + "/web1.qmp" }

    private func pointQMPLink(at qemu: QEMUProcess) throws {
        unlink(qmpPath)
        guard symlink(qemu.qmpSocketPath, qmpPath) == 0 else {
            throw ChildError("symlink \(qmpPath): \(String(cString: strerror(errno)))")
        }
    }

    /// Kills the VM (as a crash or `quit` would) and starts it again with the same command line.
    public func restartQEMU() async throws {
        let old = qemu
        await old.terminate()
        let fresh = try await QEMUProcess.launch(
            QEMUOptions(
                nics: nics, probes: nics.map { (probes[$0.id]!, $0.hubID) }, paused: paused,
                additionalMonitors: ["test.qmp"]))
        vm.withLock { $0 = fresh }
        try pointQMPLink(at: fresh)
    }

    /// Stops QEMU and removes the namespace, the probes and the files. Always call it.
    public func cleanup() async {
        // macvtapd processes first: one still running would write into the directory removed below.
        for child in children.withLock({ $0 }) { await child.stop() }
        await vm.withLock({ $0 })?.terminate()
        for probe in probes.values { probe.close() }
        try? await namespace.remove()
        directory.remove()
    }

    // MARK: Host interfaces

    static func addLower(_ name: String, in namespace: NetworkNamespace) async throws {
        try await namespace.ip("link", "add", name, "type", "veth", "peer", "name", name + "p")
        try await namespace.ip("link", "set", name, "up")
        try await namespace.ip("link", "set", name + "p", "up")
    }

    public func addLower(_ name: String) async throws { try await Self.addLower(name, in: namespace) }

    /// Hot-removes the host interface (and with it, in the kernel, every macvtap on it).
    public func deleteLower(_ name: String) async throws { try await namespace.ip("link", "del", name) }

    /// The macvtaps in the namespace, as `ip -d link` shows them: name and alias.
    public func macvtaps() async throws -> [(name: String, alias: String?)] {
        let output = try await namespace.ip("-o", "-d", "link", "show", "type", "macvtap")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { return nil }
            let name = fields[1].split(separator: "@").first.map(String.init) ?? ""
            let alias = line.range(of: "alias ").map {
                String(line[$0.upperBound...]).trimmingCharacters(in: .whitespaces)
            }
            return (name, alias)
        }
    }

    // MARK: macvtapd

    public func writeConfig(_ yaml: String) throws {
        try directory.write("macvtapd.yaml", yaml)
    }

    /// A config binding every NIC of the VM, `nic → lower`, with `extra` lines per NIC.
    public func writeConfig(vm: String = "web1", bindings: [(nic: String, lower: String)], link: String = "follow")
        throws
    {
        var yaml = "version: 1\ndefaults:\n  link: \(link)\nvms:\n  \(vm):\n    qmp: \(qmpPath)\n    nics:\n"
        for binding in bindings {
            yaml += "      \(binding.nic):\n        host: \(binding.lower)\n"
        }
        try writeConfig(yaml)
    }

    /// `macvtapd <command> ...` inside the namespace, with this sandbox's config, status and runtime paths.
    public func macvtapd(_ command: String, _ arguments: [String] = []) async throws -> ChildResult {
        try await ChildProcess.run("/usr/sbin/ip", commandLine(command, arguments))
    }

    /// `macvtapd <command> ...` left running in the background (a daemon, or an apply to kill midway),
    /// its output in `<log>` in the sandbox directory.
    /// `environment` adds variables (e.g. NOTIFY_SOCKET); `stderr`, when given, is the fd the child's
    /// standard error goes to instead of the log (e.g. a pipe nobody reads).
    @available(*, noasync, message: "posix_spawn waits for the exec on a cooperative pool thread: use launch")
    public func start(
        _ command: String, _ arguments: [String] = [], log: String, environment: [String: String] = [:],
        stderr: Int32? = nil
    ) throws -> BackgroundProcess {
        let process = try BackgroundProcess.start(
            "/usr/sbin/ip", commandLine(command, arguments), logPath: directory.path + "/" + log,
            environment: environment, stderr: stderr)
        children.withLock { $0.append(process) }
        return process
    }

    /// `start` with the spawn on a thread of its own.
    public func launch(
        _ command: String, _ arguments: [String] = [], log: String, environment: [String: String] = [:],
        stderr: Int32? = nil
    ) async throws -> BackgroundProcess {
        try await offPool {
            try self.start(command, arguments, log: log, environment: environment, stderr: stderr)
        }
    }

    /// `startDaemon` with the spawn on a thread of its own: posix_spawn waits for the child's exec,
    /// which a loaded machine delays (a pool probe saw a spawn wait 250 ms in clone3).
    public func launchDaemon(
        _ arguments: [String] = [], environment: [String: String] = [:], stderr: Int32? = nil
    ) async throws -> BackgroundProcess {
        try await offPool { try self.startDaemon(arguments, environment: environment, stderr: stderr) }
    }

    /// Starts `macvtapd run` in the background inside the namespace; stop it with `stop(daemon:)`.
    /// Spawns on the calling thread: async code uses `launchDaemon`.
    public func startDaemon(
        _ arguments: [String] = [], environment: [String: String] = [:], stderr: Int32? = nil
    ) throws -> BackgroundProcess {
        try start(
            "run", ["--metrics-file", directory.path + "/macvtapd.prom"] + arguments, log: "daemon.log",
            environment: environment, stderr: stderr)
    }

    /// `ip netns exec <namespace> macvtapd <command>` with this sandbox's config, status and device paths.
    private func commandLine(_ command: String, _ arguments: [String]) -> [String] {
        var all = [command] + arguments
        if command != "status" && command != "validate" {
            all += ["-c", configPath, "--qmp-timeout", "3"]
        }
        // Only the commands that open tap devices take --device-dir.
        if command == "apply" || command == "run" { all += ["--device-dir", deviceDirectory] }
        if command != "validate" { all += ["--status-file", statusPath] }
        // Every command that talks to a daemon finds this sandbox's, never the host's default one.
        if command != "validate" { all += ["--control-socket", controlSocketPath] }
        return ["netns", "exec", namespace.name, binary] + all
    }

    public func status() throws -> StatusDocument? { try StatusStore(path: statusPath).read() }

    // MARK: Data plane

    func nic(_ id: String) -> QEMUNIC { nics.first { $0.id == id }! }

    /// Sends frames addressed to the NIC into the lower's peer until one reaches the NIC's hub probe.
    public func frameReachesHub(from lower: String, nic id: String, within timeout: Duration = .seconds(3)) async throws
        -> Bool
    {
        let socket = try await PacketSocket.open(interface: lower + "p", in: namespace)
        defer { socket.close() }
        return try await probes[id]!.receivesFrame(to: MACAddress(nic(id).mac)!, sentThrough: socket, within: timeout)
    }

    /// Sends frames from the NIC's hub probe until one comes out of the lower's peer.
    public func frameLeavesThrough(_ lower: String, nic id: String, within timeout: Duration = .seconds(3)) async throws
        -> Bool
    {
        let socket = try await PacketSocket.open(interface: lower + "p", in: namespace)
        defer { socket.close() }
        let marker = EthernetFrame.uniqueMarker()
        let frame = EthernetFrame.make(source: MACAddress(nic(id).mac)!.bytes, payload: marker)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            try probes[id]!.send(frame)
            let seen = try await socket.receive(timeout: .milliseconds(200)) { received in
                received.count >= marker.count
                    && received.indices.dropLast(marker.count - 1).contains {
                        Array(received[$0..<$0 + marker.count]) == marker
                    }
            }
            if seen != nil { return true }
        }
        return false
    }

    // MARK: QEMU

    /// `info network` through the test's own monitor.
    public func network() async throws -> NetworkInfo {
        let client = try await QMPClient.connect(to: testMonitorPath)
        defer { Task { await client.close() } }
        return try await client.networkInfo()
    }

    /// QEMU's CPU use (user + system) over `window`, as a fraction of one core.
    public func qemuCPU(over window: Duration = .seconds(1)) async throws -> Double {
        func ticks() throws -> Double {
            let stat = try String(contentsOfFile: "/proc/\(qemu.pid)/stat", encoding: .utf8)
            let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
            // After the command name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
            return Double(fields[11])! + Double(fields[12])!
        }
        let hertz = Double(sysconf(Int32(_SC_CLK_TCK)))
        let before = try ticks()
        let start = ContinuousClock.now
        try await Task.sleep(for: window)
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return (try ticks() - before) / hertz / seconds
    }
}
