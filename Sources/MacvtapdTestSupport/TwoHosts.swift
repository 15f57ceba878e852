import MacvtapdCore
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Two hosts and the switch between them on one machine, for VM lifecycle and live migration:
///
///     host a (netns): eth0 ══ a-eth0 ┐                       client a (netns): cl0, a bridge-mode
///     host b (netns): eth0 ══ b-eth0 ┴ br0 in the switch      macvlan on host a's eth0 (10.99.0.11)
///                                      (netns, 02:99:00:00:00:01, 10.99.0.1/24)
///
/// Each host runs its own `macvtapd run` with its own config, status and device directory; QEMUs
/// run in the test's namespace (macvtapd passes them the tap fds over QMP). A co-located client is
/// a bridge-mode macvlan on the host's eth0 moved into a namespace of its own: it keeps its lower,
/// so frames between it and a macvtap on the same eth0 never leave the host (DESIGN.md).
public final class TwoHosts: Sendable {
    public static let switchMAC = MACAddress("02:99:00:00:00:01")!
    public static let switchAddress = "10.99.0.1"

    /// One host: its namespace, its co-located client and its macvtapd's files.
    public struct Host: Sendable {
        /// `a` or `b`: also the prefix of its switch port (`a-eth0`).
        public let name: String
        public let namespace: NetworkNamespace
        public let client: NetworkNamespace
        /// The client's address (10.99.0.11 on a, 10.99.0.12 on b).
        public let clientAddress: String
        public let directory: String

        public var configPath: String { directory + "/macvtapd.yaml" }
        public var statusPath: String { directory + "/status.json" }
        public var deviceDirectory: String { directory + "/dev" }
        public var logPath: String { directory + "/daemon.log" }
        /// The switch port this host's eth0 is cabled to.
        public var switchPort: String { name + "-eth0" }
    }

    public let network: NetworkNamespace
    public let a: Host
    public let b: Host
    public let directory: TemporaryDirectory
    public let binary: String
    private let daemons = Mutex<[BackgroundProcess]>([])

    /// Runs `body` with both hosts and the switch; always cleans up, even when `body` throws.
    public static func with<Result>(_ body: (TwoHosts) async throws -> Result) async throws -> Result {
        try await withCleanup(try await TwoHosts(), cleanup: { await $0.cleanup() }, body)
    }

    public init() async throws {
        directory = try TemporaryDirectory()
        var created: [NetworkNamespace] = []
        func namespace(_ prefix: String) async throws -> NetworkNamespace {
            let made = try await NetworkNamespace(prefix: prefix)
            created.append(made)
            return made
        }
        do {
            binary = try ChildProcess.macvtapdBinary()
            network = try await namespace("mvtsw")
            try await network.ip("link", "add", "br0", "type", "bridge")
            try await network.ip("link", "set", "br0", "address", Self.switchMAC.description)
            try await network.ip("addr", "add", Self.switchAddress + "/24", "dev", "br0")
            try await network.ip("link", "set", "br0", "up")
            var hosts: [Host] = []
            for (name, address) in [("a", "10.99.0.11"), ("b", "10.99.0.12")] {
                let hostNamespace = try await namespace("mvthost\(name)")
                let client = try await namespace("mvtcl\(name)")
                let host = Host(
                    name: name, namespace: hostNamespace, client: client,
                    clientAddress: address, directory: directory.path + "/" + name)
                mkdir(host.directory, 0o755)
                try await Self.cable(host, to: network)
                hosts.append(host)
            }
            a = hosts[0]
            b = hosts[1]
        } catch {
            for made in created { try? await made.remove() }
            directory.remove()
            throw error
        }
    }

    /// eth0 on the host, its peer a port of the switch's bridge, and the co-located client.
    private static func cable(_ host: Host, to network: NetworkNamespace) async throws {
        try await host.namespace.ip(
            "link", "add", "eth0", "type", "veth", "peer", "name", host.switchPort, "netns", network.name)
        try await network.ip("link", "set", host.switchPort, "master", "br0")
        try await network.ip("link", "set", host.switchPort, "up")
        try await host.namespace.ip("link", "set", "eth0", "up")
        try await host.namespace.ip("link", "add", "link", "eth0", "name", "cl0", "type", "macvlan", "mode", "bridge")
        try await host.namespace.ip("link", "set", "cl0", "netns", host.client.name)
        try await host.client.ip("addr", "add", host.clientAddress + "/24", "dev", "cl0")
        try await host.client.ip("link", "set", "cl0", "up")
    }

    /// Daemons first (one still running would write into the directory removed below), then the
    /// namespaces (their interfaces go with them) and the files.
    public func cleanup() async {
        for daemon in daemons.withLock({ $0 }) { await daemon.stop() }
        for namespace in [a.namespace, a.client, b.namespace, b.client, network] { try? await namespace.remove() }
        directory.remove()
    }

    // MARK: macvtapd

    /// The same bindings on every host, as a fleet-wide desired state would have them; only the
    /// monitor path differs, because both "hosts" share one filesystem here.
    public static func config(vm: String, qmp: String, nics: [String], extra: [String] = []) -> String {
        var yaml = "version: 1\nvms:\n  \(vm):\n    qmp: \(qmp)\n    nics:\n"
        for nic in nics {
            yaml += "      \(nic):\n        host: eth0\n"
            for line in extra { yaml += "        \(line)\n" }
        }
        return yaml
    }

    /// Writes the host's config atomically (the daemon watches it).
    public func writeConfig(_ yaml: String, on host: Host) throws {
        try AtomicFile.write(yaml.utf8, to: host.configPath)
    }

    /// `macvtapd run` inside the host's namespace with its files; stopped by `cleanup` at the latest.
    /// `startDaemon` with the spawn on a thread of its own: posix_spawn waits for the child's exec,
    /// which a loaded machine delays (a pool probe saw a spawn wait 250 ms in clone3).
    public func launchDaemon(on host: Host, _ arguments: [String] = []) async throws -> BackgroundProcess {
        try await offPool { try self.startDaemon(on: host, arguments) }
    }

    public func startDaemon(on host: Host, _ arguments: [String] = []) throws -> BackgroundProcess {
        let daemon = try BackgroundProcess.start(
            "/usr/sbin/ip",
            [
                "netns", "exec", host.namespace.name, binary, "run", "-c", host.configPath, "--device-dir",
                host.deviceDirectory, "--status-file", host.statusPath, "--metrics-file", "", "--qmp-timeout", "3",
                "--control-socket", host.directory + "/run/control.sock",
            ] + arguments,
            logPath: host.logPath)
        daemons.withLock { $0.append(daemon) }
        return daemon
    }

    public func status(on host: Host) -> StatusDocument? { try? StatusStore(path: host.statusPath).read() }

    /// The phase of `vm/nic` in the host's status file; nil when it has none.
    public func phase(_ vm: String, _ nic: String = "nic0", on host: Host) -> Phase? {
        status(on: host)?.binding(BindingKey(vm: vm, nic: nic))?.phase
    }

    /// The host's macvtaps and whether each is administratively up (IFF_UP).
    public func macvtaps(on host: Host) async throws -> [(name: String, up: Bool)] {
        let output = try await host.namespace.ip("-o", "link", "show", "type", "macvtap")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 2 else { return nil }
            let name = fields[1].split(separator: "@").first.map(String.init) ?? ""
            let flags = fields[2].trimmingCharacters(in: ["<", ">"]).split(separator: ",")
            return (name, flags.contains("UP"))
        }
    }

    /// The switch port the bridge has learned `mac` on; nil when it has not.
    public func learnedPort(of mac: MACAddress) async throws -> String? {
        let output = try await network.exec(["bridge", "fdb", "show", "br", "br0"])
        for line in output.split(separator: "\n") where !line.contains("permanent") {
            let words = line.split(separator: " ")
            if words.count >= 3, MACAddress(String(words[0])) == mac, words[1] == "dev" { return String(words[2]) }
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingCharacters(in characters: Set<Character>) -> String {
        String(drop { characters.contains($0) }.reversed().drop { characters.contains($0) }.reversed())
    }
}
