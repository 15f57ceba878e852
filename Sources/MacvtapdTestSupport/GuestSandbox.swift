import Foundation
import MacvtapdCore
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A real Linux guest (`GuestVM`) whose NICs macvtapd binds to host interfaces of a test network
/// namespace, with the far side of every host interface on one Linux bridge: the upstream switch.
///
///     guest eth0 ─ hub ─ macvtap ─ up0 ══ up0p ┐
///     guest eth1 ─ hub ─ macvtap ─ up1 ══ up1p ┴ br0 (02:99:00:00:00:01, 10.99.0.1/24)
///
/// Each host interface is a veth whose peer is a bridge port. Deleting a host interface deletes its
/// peer too (veths go in pairs), so a returning interface is a new pair whose peer joins the bridge
/// again; the bridge itself, its MAC and its address never change, like a physical switch.
public final class GuestSandbox: Sendable {
    public static let bridge = "br0"
    public static let bridgeMAC = MACAddress("02:99:00:00:00:01")!
    public static let bridgeAddress = "10.99.0.1"
    public static let prefixLength = 24

    public let namespace: NetworkNamespace
    /// The guest; a sandbox made by `with(lowers:)` has none (its guest runs elsewhere, e.g. under
    /// libvirt): asking for it then is a test's bug.
    public var vm: GuestVM { guest! }
    private let guest: GuestVM?
    public let directory: TemporaryDirectory
    public let binary: String
    /// The daemons `startDaemon` left running, stopped by `cleanup` if the test did not.
    private let daemons = Mutex<[BackgroundProcess]>([])

    public var configPath: String { directory.path + "/macvtapd.yaml" }
    public var statusPath: String { directory.path + "/status.json" }

    /// Runs `body` with a booted guest and the namespace; always cleans up, even when `body` throws.
    public static func with<Result>(
        _ configuration: GuestConfiguration, lowers: [String], _ body: (GuestSandbox) async throws -> Result
    ) async throws -> Result {
        try await withCleanup(try await start(configuration, lowers: lowers), cleanup: { await $0.cleanup() }, body)
    }

    /// The namespace, bridge and host interfaces without a guest: for a guest another launcher runs.
    public static func with<Result>(lowers: [String], _ body: (GuestSandbox) async throws -> Result) async throws
        -> Result
    {
        try await withCleanup(try await start(nil, lowers: lowers), cleanup: { await $0.cleanup() }, body)
    }

    /// The namespace with the bridge and `lowers`, then the guest (if any) booted to `GUEST READY`.
    public static func start(_ configuration: GuestConfiguration?, lowers: [String]) async throws -> GuestSandbox {
        let namespace = try await NetworkNamespace(prefix: "mvtguest")
        let directory: TemporaryDirectory
        do {
            directory = try TemporaryDirectory()
        } catch {
            try? await namespace.remove()
            throw error
        }
        do {
            try await namespace.ip("link", "add", bridge, "type", "bridge")
            try await namespace.ip("link", "set", bridge, "address", bridgeMAC.description)
            try await namespace.ip("addr", "add", "\(bridgeAddress)/\(prefixLength)", "dev", bridge)
            try await namespace.ip("link", "set", bridge, "up")
            for lower in lowers { try await addLower(lower, in: namespace, directory: directory) }
            let binary = try ChildProcess.macvtapdBinary()
            var vm: GuestVM?
            if let configuration { vm = try await GuestVM.boot(configuration) }
            return GuestSandbox(namespace: namespace, vm: vm, directory: directory, binary: binary)
        } catch {
            try? await namespace.remove()
            directory.remove()
            throw error
        }
    }

    private init(namespace: NetworkNamespace, vm: GuestVM?, directory: TemporaryDirectory, binary: String) {
        self.namespace = namespace
        guest = vm
        self.directory = directory
        self.binary = binary
    }

    /// Stops the guest, removes the namespace (its interfaces go with it) and the files.
    public func cleanup() async {
        // The daemon first: one still running would write into the directory removed below.
        for daemon in daemons.withLock({ $0 }) { await daemon.stop() }
        guest?.terminate()
        try? await namespace.remove()
        directory.remove()
    }

    // MARK: Host interfaces

    /// One `ip -batch` so the interface appears, joins the bridge and gets carrier in one step:
    /// return times are measured from here.
    private static func addLower(
        _ name: String, carrier: Bool = true, in namespace: NetworkNamespace, directory: TemporaryDirectory
    ) async throws {
        let batch = try directory.write(
            "add-\(name).ip",
            """
            link add \(name) type veth peer name \(name)p
            link set \(name)p master \(bridge)
            link set \(name)p \(carrier ? "up" : "down")
            link set \(name) up

            """)
        try await namespace.ip("-batch", batch)
    }

    /// The host interface (re)appears: a new veth pair whose peer joins the bridge, both up; with
    /// `carrier: false` the peer stays down until `setCarrier(of:up:)`, as a port whose link
    /// partner is not there yet.
    public func addLower(_ name: String, carrier: Bool = true) async throws {
        try await Self.addLower(name, carrier: carrier, in: namespace, directory: directory)
    }

    /// Hot-removes the host interface (its bridge port and every macvtap on it go with it).
    public func deleteLower(_ name: String) async throws { try await namespace.ip("link", "del", name) }

    /// The host interface stays but loses (or regains) carrier: its peer, the bridge port, goes down.
    public func setCarrier(of lower: String, up: Bool) async throws {
        try await namespace.ip("link", "set", lower + "p", up ? "up" : "down")
    }

    /// The bridge port the bridge has learned `mac` on, from `bridge fdb`; nil when it has not.
    public func learnedPort(of mac: MACAddress) async throws -> String? {
        let output = try await namespace.exec(["bridge", "fdb", "show", "br", Self.bridge])
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count >= 3, MACAddress(String(words[0])) == mac, words[1] == "dev" else { continue }
            if line.contains("permanent") { continue }
            return String(words[2])
        }
        return nil
    }

    /// The MACs of the macvtaps in the namespace.
    public func macvtapMACs() async throws -> [MACAddress] {
        let output = try await namespace.ip("-o", "link", "show", "type", "macvtap")
        return output.split(separator: "\n").compactMap { line in
            guard let range = line.range(of: "link/ether ") else { return nil }
            return MACAddress(String(line[range.upperBound...].prefix(17)))
        }
    }

    /// The macvtaps in the namespace as `ip -o link` lists them: ifindex, name, administratively up.
    public func macvtaps() async throws -> [(ifindex: Int, name: String, up: Bool)] {
        let output = try await namespace.ip("-o", "link", "show", "type", "macvtap")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 2, let ifindex = Int(fields[0].dropLast()) else { return nil }
            let name = fields[1].split(separator: "@").first.map(String.init) ?? ""
            let flags = fields[2].dropFirst().dropLast().split(separator: ",")
            return (ifindex, name, flags.contains("UP"))
        }
    }

    /// Echoes from the bridge to `target` (default: the guest's usual address 10.99.0.2).
    /// Made on a thread of its own (it enters the namespace).
    public func makePinger(target: String = "10.99.0.2") async throws -> ICMPPinger {
        try await ICMPPinger.open(target: target, in: namespace)
    }

    /// `makePinger` entering the namespace on the calling thread (the benchmarks').
    public func pinger(target: String = "10.99.0.2") throws -> ICMPPinger {
        try ICMPPinger(target: target, in: namespace)
    }

    // MARK: macvtapd

    public func writeConfig(_ yaml: String) throws {
        // Write and rename: the daemon watches the directory and must never read half a file.
        try directory.write("macvtapd.yaml.new", yaml)
        guard rename(directory.path + "/macvtapd.yaml.new", configPath) == 0 else {
            throw ChildError("rename to \(configPath): \(String(cString: strerror(errno)))")
        }
    }

    /// A config with the guest as VM `guest`, binding each NIC to a host interface, `extra` lines
    /// (e.g. `announce: false`) on every NIC.
    public func writeConfig(bindings: [(nic: String, lower: String)], link: String = "follow", extra: [String] = [])
        throws
    {
        var yaml = "version: 1\ndefaults:\n  link: \(link)\nvms:\n  guest:\n    qmp: \(vm.qmpSocketPath)\n    nics:\n"
        for binding in bindings {
            yaml += "      \(binding.nic):\n        host: \(binding.lower)\n"
            for line in extra { yaml += "        \(line)\n" }
        }
        try writeConfig(yaml)
    }

    /// `macvtapd run` inside the namespace; stop it with `stop()`.
    /// `startDaemon` with the spawn on a thread of its own: posix_spawn waits for the child's exec,
    /// which a loaded machine delays (a pool probe saw a spawn wait 250 ms in clone3).
    public func launchDaemon(_ arguments: [String] = []) async throws -> BackgroundProcess {
        try await offPool { try self.startDaemon(arguments) }
    }

    public func startDaemon(_ arguments: [String] = []) throws -> BackgroundProcess {
        let daemon = try BackgroundProcess.start(
            "/usr/sbin/ip",
            [
                "netns", "exec", namespace.name, binary, "run", "-c", configPath, "--device-dir",
                directory.path + "/dev", "--status-file", statusPath, "--metrics-file", "", "--qmp-timeout", "3",
                "--control-socket", directory.path + "/run/control.sock",
            ] + arguments,
            logPath: directory.path + "/daemon.log")
        daemons.withLock { $0.append(daemon) }
        return daemon
    }

    public func status() throws -> StatusDocument? { try StatusStore(path: statusPath).read() }

    /// Waits until every binding in the status file has `phase`.
    public func waitForPhase(_ phase: Phase, bindings: Int, timeout: Duration = .seconds(15)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let document = try? status(), document.bindings.count == bindings,
                document.bindings.allSatisfy({ $0.phase == phase })
            {
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ChildError("bindings not \(phase.rawValue) within \(timeout): \(String(describing: try? status()))")
    }
}
