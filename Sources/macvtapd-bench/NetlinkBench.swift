import ArgumentParser
import Glibc
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport

struct NetlinkBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netlink",
        abstract: "Create + open + delete of a macvtap, beside `ip link`.",
        discussion: """
            Runs in a fresh network namespace with a veth pair as the lower interface (needs root).
            One client cycle: the daemon's creation (RTM_NEWLINK of the macvtap down, echoed back;
            one RTM_SETLINK for the alias, which the kernel ignores on creation, and IPv6 address
            generation off; one to bring it up; a GET), the open of the tap device through a
            private node with IFF_VNET_HDR, and RTM_DELLINK.
            The baseline cycle is `ip link add ... alias ... up type macvtap` and `ip link del`, each
            a spawned process; it does not open the device.
            """)

    @Option(help: "Client cycles.") var cycles = 1000
    @Option(help: "`ip link` baseline cycles (two process spawns each).") var baselineCycles = 200

    func validate() throws {
        guard cycles > 0, baselineCycles > 0 else { throw ValidationError("cycle counts must be positive") }
    }

    func run() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtdbench")
        defer { try? namespace.delete() }
        try await namespace.addVethPair("lower0", peer: "peer0")
        let sysfs = try NetworkNamespaceSysfs(of: namespace)
        defer { sysfs.unmount() }
        var template = Array("/tmp/mvtd-bench-XXXXXX".utf8CString)
        let runtimeDirectory = String(cString: mkdtemp(&template)!)
        defer { rmdir(runtimeDirectory) }
        let route = try RouteSocket(networkNamespace: namespace.path)
        defer { route.close() }
        let lower = try route.link(named: "lower0")
        let device = MacvtapDevice(sysfsRoot: sysfs.path, runtimeDirectory: runtimeDirectory)
        let configuration = MacvtapConfiguration(
            name: "mvtbench0", lowerIndex: lower.index, mode: .bridge, address: MACAddress("02:00:5e:00:00:01"),
            alias: "macvtapd:bench/nic0")

        let clock = ContinuousClock()
        var create: [Duration] = []
        var open: [Duration] = []
        var delete: [Duration] = []
        var total: [Duration] = []
        for cycle in -20..<cycles {  // the first 20 warm caches and are not counted
            var link: Link?
            var tap: FileDescriptor?
            let createTime = try clock.measure { link = try route.createMacvtap(configuration) }
            let openTime = try clock.measure { tap = try device.open(link!) }
            let deleteTime = try clock.measure {
                tap!.close()
                try route.deleteLink(index: link!.index)
            }
            guard cycle >= 0 else { continue }
            create.append(createTime)
            open.append(openTime)
            delete.append(deleteTime)
            total.append(createTime + openTime + deleteTime)
        }

        var baseline: [Duration] = []
        let add = [
            "ip", "-n", namespace.name, "link", "add", "link", "lower0", "name", "mvtbench0", "address",
            "02:00:5e:00:00:01", "alias", "macvtapd:bench/nic0", "up", "type", "macvtap", "mode", "bridge",
        ]
        let del = ["ip", "-n", namespace.name, "link", "del", "mvtbench0"]
        for cycle in -5..<baselineCycles {
            let time = try clock.measure {
                try NetworkNamespaceCommand.runBlocking(add)
                try NetworkNamespaceCommand.runBlocking(del)
            }
            if cycle >= 0 { baseline.append(time) }
        }

        let client = LatencySummary(total)
        let ip = LatencySummary(baseline)
        let createAndOpen = LatencySummary(zip(create, open).map { $0 + $1 })
        print("macvtap create+open+delete in a fresh namespace (veth lower, mode bridge)")
        print("  client   cycle        \(client)")
        print("           create       \(LatencySummary(create))")
        print("           open         \(LatencySummary(open))")
        print("           create+open  \(createAndOpen)")
        print("           delete       \(LatencySummary(delete))")
        print("  ip link  add+del      \(ip)")
        print("  ratio ip/client: median \(ratio(ip.median, client.median))x, p99 \(ratio(ip.p99, client.p99))x")
        print("  median < 1 ms: cycle \(verdict(client.median)), create+open \(verdict(createAndOpen.median))")
    }

    private func verdict(_ median: Duration) -> String { median < .milliseconds(1) ? "met" : "missed" }

    private func ratio(_ numerator: Duration, _ denominator: Duration) -> String {
        let tenths = Int((numerator / denominator * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}
