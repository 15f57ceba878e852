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
            // Entering the namespace and mounting its sysfs block: on a thread of their own.
            let namespace = namespace
            (route, sysfs) = try await offPool {
                (try RouteSocket(networkNamespace: namespace.path), try NetworkNamespaceSysfs(of: namespace))
            }
            var template = Array("/tmp/mvtd-run-XXXXXX".utf8CString)
            runtimeDirectory = String(cString: mkdtemp(&template)!) + "/dev"
            lower = try await route.link(named: veth.name)
        } catch {
            try? await namespace.remove()
            throw error
        }
    }

    /// Runs `body` with a fresh host and tears it down afterwards, also when `body` throws.
    static func with(_ body: (NetlinkTestHost) async throws -> Void) async throws {
        let host = try await NetlinkTestHost()
        do {
            try await body(host)
        } catch {
            await host.tearDown()
            throw error
        }
        await host.tearDown()
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

    /// Unmounting and deleting the namespace wait for RCU grace periods: on a thread of their own.
    func tearDown() async {
        route.close()
        let (sysfs, runtimeDirectory) = (sysfs, runtimeDirectory)
        await offPool {
            sysfs.unmount()
            rmdir(runtimeDirectory)
            rmdir(String(runtimeDirectory.dropLast("/dev".count)))
        }
        await #expect(throws: Never.self) { try await namespace.remove() }
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
