import Glibc
import MacvtapdConfig
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport
import Testing

/// One test's world: a fresh namespace with a veth pair (`lower0`, the host interface, and
/// `peer0`, the far end), a route socket inside it, its sysfs mounted, a private runtime directory.
final class NetlinkTestHost {
    let namespace: NetworkNamespace
    let veth: VethPair
    let route: RouteSocket
    let sysfs: NetworkNamespaceSysfs
    let runtimeDirectory: String
    let lower: Link

    init() async throws {
        namespace = try await NetworkNamespace(prefix: "mvtdnl")
        do {
            veth = try await namespace.addVethPair("lower0", peer: "peer0")
            route = try RouteSocket(networkNamespace: namespace.path)
            sysfs = try NetworkNamespaceSysfs(of: namespace)
            var template = Array("/tmp/mvtd-run-XXXXXX".utf8CString)
            runtimeDirectory = String(cString: mkdtemp(&template)!) + "/dev"
            lower = try route.link(named: veth.name)
        } catch {
            try? namespace.delete()
            throw error
        }
    }

    var device: MacvtapDevice { MacvtapDevice(sysfsRoot: sysfs.path, runtimeDirectory: runtimeDirectory) }

    func macvtap(
        _ name: String = "mvt0", mode: MacvtapMode = .bridge, address: MACAddress? = MACAddress("02:00:5e:00:00:01"),
        alias: String? = "macvtapd:vm/nic0"
    ) -> MacvtapConfiguration {
        MacvtapConfiguration(name: name, lowerIndex: lower.index, mode: mode, address: address, alias: alias)
    }

    /// Runtime directory entries: the device nodes must be gone right after each open.
    func runtimeDirectoryEntries() -> [String] {
        guard let directory = opendir(runtimeDirectory) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = direntName(entry)
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    func tearDown() {
        route.close()
        sysfs.unmount()
        rmdir(runtimeDirectory)
        rmdir(String(runtimeDirectory.dropLast("/dev".count)))
        #expect(throws: Never.self) { try namespace.delete() }
        #expect(!namespace.exists, "namespace \(namespace.name) left behind")
    }
}

/// Reads the next events of a monitor until `done` says so; the monitor is closed after
/// `timeout` so a missing event fails the test instead of hanging it.
func events(
    from monitor: LinkMonitor, timeout: Duration = .seconds(5), until done: (LinkEvent) -> Bool
) async -> [LinkEvent] {
    let watchdog = Task {
        try await Task.sleep(for: timeout)
        monitor.close()
    }
    defer { watchdog.cancel() }
    var seen: [LinkEvent] = []
    for await event in monitor.events {
        seen.append(event)
        if done(event) { break }
    }
    return seen
}
