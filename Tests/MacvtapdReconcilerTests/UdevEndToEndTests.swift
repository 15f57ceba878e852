import Foundation
import MacvtapdCore
import MacvtapdTestSupport
import Testing

/// Host matching by udev identity and waiting for udev, end to end: the real binary in a network
/// namespace with veth host interfaces, real libudev reading a hand-written udev database mounted
/// at a private `/run/udev`, a real QEMU, frames checked through the hub probe.
@Suite(.serialized) struct UdevEndToEndTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:e2:ed:00", hubID: 10)
    static let nic1 = QEMUNIC(id: "nic1", mac: "52:54:00:e2:ed:01", hubID: 11)

    static func config(_ sandbox: Sandbox, _ nics: [(nic: String, host: String)]) throws {
        var yaml = "version: 1\nvms:\n  web1:\n    qmp: \(sandbox.qmpPath)\n    nics:\n"
        for (nic, host) in nics { yaml += "      \(nic):\n        host: \(host)\n" }
        try sandbox.writeConfig(yaml)
    }

    static func ifindex(_ name: String, in sandbox: Sandbox) async throws -> Int32 {
        let line = try await sandbox.namespace.ip("-o", "link", "show", "dev", name)
        return Int32(line.prefix { $0 != ":" })!
    }

    /// What udevd does once it has processed a new port: rename it and record its identity.
    static func udevFinishes(
        _ sandbox: Sandbox, renaming from: String, to name: String, path: String
    ) async throws {
        let index = try await ifindex(from, in: sandbox)
        try await sandbox.namespace.ip("link", "set", from, "name", name)
        try await sandbox.namespace.ip("link", "set", name, "up")
        try UdevView.writeDatabaseEntry(
            in: sandbox.udevRunDirectory, ifindex: index, properties: ["ID_PATH": path, "ID_NET_NAME_PATH": name])
    }

    /// udev has processed every link but `pending` (as it has, on a host, long before macvtapd looks).
    static func udevProcessedAll(_ sandbox: Sandbox, except pending: Set<String>) async throws {
        for line in try await sandbox.namespace.ip("-o", "link", "show").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 1, let index = Int32(fields[0].dropLast()) else { continue }
            let name = String(fields[1].dropLast().split(separator: "@")[0])
            if pending.contains(name) { continue }
            let entry = sandbox.udevRunDirectory + "/data/n\(index)"
            if !FileManager.default.fileExists(atPath: entry) {
                try UdevView.writeDatabaseEntry(in: sandbox.udevRunDirectory, ifindex: index, properties: [:])
            }
        }
    }

    /// A port as the kernel announces it, before udev: `name` (renamed later), its peer `peer`.
    static func portAppears(_ sandbox: Sandbox, _ name: String, peer: String, mac: String? = nil) async throws {
        if let mac {
            try await sandbox.namespace.ip("link", "add", name, "address", mac, "type", "veth", "peer", "name", peer)
        } else {
            try await sandbox.namespace.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        }
        try await sandbox.namespace.ip("link", "set", peer, "up")
    }

    @Test func pathBindingWaitsForUdevThenAttachesToTheRenamedPort() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["enp4s0"]) { sandbox in
            try sandbox.writeConfig("version: 1\nvms: {}\n")
            #expect(try await sandbox.macvtapdWithUdev("apply").status == 0, "makes the udev run directory")
            // Another port, initialised at another PCI address.
            try await UdevView.writeDatabaseEntry(
                in: sandbox.udevRunDirectory, ifindex: try Self.ifindex("enp4s0", in: sandbox),
                properties: ["ID_PATH": "pci-0000:04:00.0", "ID_NET_NAME_PATH": "enp4s0"])
            try Self.config(sandbox, [("nic0", "{path: \"pci-0000:03:00.0\"}")])

            // The kernel announces the new port as eth0; udev has not processed it yet.
            try await Self.portAppears(sandbox, "eth0", peer: "enp3s0p")
            try await sandbox.namespace.ip("link", "set", "eth0", "up")
            try await Self.udevProcessedAll(sandbox, except: ["eth0"])
            let early = try await sandbox.macvtapdWithUdev("apply")
            #expect(early.status == 0, "waiting is not failing: \(early.stderr)")
            let waiting = try #require(try sandbox.status()?.bindings.first)
            #expect(waiting.phase == .hostMissing)
            #expect(waiting.reason == "HostNotInitialized", "\(waiting.message)")
            #expect(
                waiting.message.hasPrefix(
                    "host path pci-0000:03:00.0 does not exist yet; udev has not finished with eth0"),
                "\(waiting.message)")
            #expect(try await sandbox.macvtaps().isEmpty, "nothing is created on a port udev is still naming")

            try await Self.udevFinishes(sandbox, renaming: "eth0", to: "enp3s0", path: "pci-0000:03:00.0")
            let apply = try await sandbox.macvtapdWithUdev("apply")
            #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
            let attached = try #require(try sandbox.status()?.bindings.first)
            #expect(attached.phase == .attached, "\(attached.message)")
            #expect(attached.lower == "enp3s0")
            #expect(try await sandbox.macvtaps().map(\.alias) == ["macvtapd:web1/nic0"], "exactly one macvtap")
            #expect(try await sandbox.frameReachesHub(from: "enp3s0", nic: "nic0"))
            #expect(!(try await sandbox.frameReachesHub(from: "enp4s0", nic: "nic0", within: .milliseconds(500))))
            #expect(try await sandbox.macvtapdWithUdev("apply").stdout.contains("No changes:"))
        }
    }

    @Test func macBindingFollowsThePortBackUnderAnotherNameOnceUdevIsDone() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: []) { sandbox in
            let mac = "02:00:00:e2:ed:99"
            try sandbox.writeConfig("version: 1\nvms: {}\n")
            #expect(try await sandbox.macvtapdWithUdev("apply").status == 0)
            try await Self.portAppears(sandbox, "eth0", peer: "enp3s0p", mac: mac)
            try await Self.udevFinishes(sandbox, renaming: "eth0", to: "enp3s0", path: "pci-0000:03:00.0")
            try Self.config(sandbox, [("nic0", "{mac: \"\(mac)\"}")])
            #expect(try await sandbox.macvtapdWithUdev("apply").status == 0)
            #expect(try await sandbox.frameReachesHub(from: "enp3s0", nic: "nic0"))

            // The port is swapped: it goes, and comes back as eth0 with the same MAC, a new ifindex,
            // and no udev entry yet. The dead backend goes; no new one on an unfinished port.
            try await sandbox.namespace.ip("link", "del", "enp3s0")
            try await Self.portAppears(sandbox, "eth0", peer: "enp3s1p", mac: mac)
            try await sandbox.namespace.ip("link", "set", "eth0", "up")
            try await Self.udevProcessedAll(sandbox, except: ["eth0"])
            #expect(try await sandbox.macvtapdWithUdev("apply").status == 0)
            let waiting = try #require(try sandbox.status()?.bindings.first)
            #expect(waiting.reason == "HostNotInitialized", "\(waiting.message)")
            #expect(waiting.message.contains("host mac \(mac) is not yet initialised by udev"), "\(waiting.message)")
            #expect(waiting.guestLink == false)
            #expect(try await sandbox.macvtaps().isEmpty)

            try await Self.udevFinishes(sandbox, renaming: "eth0", to: "enp3s1", path: "pci-0000:03:00.1")
            #expect(try await sandbox.macvtapdWithUdev("apply").status == 0)
            let attached = try #require(try sandbox.status()?.bindings.first)
            #expect(attached.phase == .attached, "\(attached.message)")
            #expect(attached.lower == "enp3s1")
            #expect(try await sandbox.macvtaps().count == 1, "exactly one macvtap")
            #expect(try await sandbox.frameReachesHub(from: "enp3s1", nic: "nic0"))
        }
    }

    @Test func withoutUdevLinksAreReadyAtOnceAndUdevMatchersSaySo() async throws {
        try await Sandbox.with(nics: [Self.nic0, Self.nic1], lowers: ["up1"]) { sandbox in
            try Self.config(
                sandbox, [("nic0", "{property: {ID_NET_NAME_PATH: enp3s0}}"), ("nic1", "up1")])
            // The default (`auto`) in a test namespace: udevd, if any, serves PID 1's namespace.
            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 0, "\(apply.stderr)")
            let status = try #require(try sandbox.status())
            let byProperty = try #require(status.binding(BindingKey(vm: "web1", nic: "nic0")))
            #expect(byProperty.phase == .hostMissing)
            #expect(byProperty.message.contains("udev describes no interface here"), "\(byProperty.message)")
            #expect(status.binding(BindingKey(vm: "web1", nic: "nic1"))?.phase == .attached)
            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic1"))
        }
    }

    @Test func daemonAttachesWhenUdevAnnouncesItIsDone() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: []) { sandbox in
            try Self.config(sandbox, [("nic0", "{path: \"pci-0000:03:00.0\"}")])
            // Only events can wake it: the periodic resync is an hour away.
            let daemon = try await sandbox.startDaemonWithUdev(["--resync", "3600"])
            defer { Task { await daemon.stop() } }
            func binding() -> BindingStatus? { (try? sandbox.status())?.bindings.first }
            #expect(await DaemonEndToEndTests.until { binding()?.phase == .hostMissing }, "\(daemon.log())")

            // The kernel announces eth0 and udevd renames it; neither says udev is done.
            try await Self.portAppears(sandbox, "eth0", peer: "enp3s0p")
            try await Self.udevProcessedAll(sandbox, except: ["eth0"])
            let index = try await Self.ifindex("eth0", in: sandbox)
            try await sandbox.namespace.ip("link", "set", "eth0", "name", "enp3s0")
            try await sandbox.namespace.ip("link", "set", "enp3s0", "up")
            #expect(
                await DaemonEndToEndTests.until { binding()?.message.contains("not finished with enp3s0") == true },
                "\(binding()?.message ?? "no status")")
            // Let the reconciles of those rtnetlink events finish: only udev's word may attach.
            try await Task.sleep(for: .milliseconds(300))
            #expect(binding()?.reason == "HostNotInitialized")
            #expect(try await sandbox.macvtaps().isEmpty)

            let properties = ["ID_PATH": "pci-0000:03:00.0", "ID_NET_NAME_PATH": "enp3s0"]
            try UdevView.writeDatabaseEntry(in: sandbox.udevRunDirectory, ifindex: index, properties: properties)
            try await UdevAnnouncer.announce(
                in: sandbox.namespace, action: "move", name: "enp3s0", ifindex: index, properties: properties)
            #expect(
                await DaemonEndToEndTests.until(.seconds(5)) { binding()?.phase == .attached },
                "\(binding()?.message ?? "no status")\n\(daemon.log())")
            #expect(binding()?.lower == "enp3s0")
            #expect(try await sandbox.macvtaps().count == 1)
            #expect(try await sandbox.frameReachesHub(from: "enp3s0", nic: "nic0"))
            #expect(await daemon.stop() == 0)
        }
    }
}

/// The same race against the real systemd-udevd, serving the sandbox's namespace only.
@Suite(.serialized) struct RealUdevdEndToEndTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:e2:ed:10", hubID: 10)

    /// What a host's rules and .link files do for a PCI port (path_id and net_id set the properties
    /// on every event, the rename happens on "add"), slowed down so the rename lands well after the
    /// kernel announced the port (two seconds: the window the test checks must outlast a loaded
    /// machine's status-file latency).
    static let rules = """
        SUBSYSTEM=="net", ACTION!="remove", KERNEL=="eth0|enp3s0", \\
          ENV{ID_PATH}="pci-0000:03:00.0", ENV{ID_NET_NAME_PATH}="enp3s0"
        SUBSYSTEM=="net", ACTION=="add", KERNEL=="eth0", PROGRAM="/bin/sleep 2", NAME="enp3s0"

        """

    @Test func daemonBindsByPathOnlyOnceUdevdHasRenamedThePort() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: []) { sandbox in
            let udevd = try await TestUdevd.start(in: sandbox, rules: Self.rules)
            defer { Task { await udevd.stop() } }
            try UdevEndToEndTests.config(sandbox, [("nic0", "{path: \"pci-0000:03:00.0\"}")])
            let daemon = try await sandbox.startDaemonWithUdev(["--resync", "3600"])
            defer { Task { await daemon.stop() } }
            func binding() -> BindingStatus? { (try? sandbox.status())?.bindings.first }
            #expect(await DaemonEndToEndTests.until { binding()?.phase == .hostMissing }, "\(daemon.log())")

            // The kernel announces eth0; udevd renames it to enp3s0 two seconds later.
            try await sandbox.namespace.ip("link", "add", "eth0", "type", "veth", "peer", "name", "enp3s0p")
            try await sandbox.namespace.ip("link", "set", "enp3s0p", "up")
            #expect(
                await DaemonEndToEndTests.until(.seconds(2)) { binding()?.reason == "HostNotInitialized" },
                "the daemon saw eth0 before udevd was done: \(binding()?.message ?? "no status")")
            // Nothing is created while udevd still works on the port. The rename is one-way: if eth0
            // still exists after the macvtaps were listed, udevd was not done when they were.
            let whileWaiting = try await sandbox.macvtaps()
            let stillUnrenamed = try await sandbox.namespace.ip("-o", "link", "show").contains(" eth0@")
            #expect(!stillUnrenamed || whileWaiting.isEmpty, "nothing is created on a port udevd is still working on")

            // udevd renames only interfaces that are down: attached, no carrier yet.
            #expect(
                await DaemonEndToEndTests.until(.seconds(10)) { binding()?.lower == "enp3s0" },
                "\(binding()?.message ?? "no status")\n\(daemon.log())\n\(udevd.process.log())")
            #expect(binding()?.phase == .noCarrier)
            try await sandbox.namespace.ip("link", "set", "enp3s0", "up")
            #expect(await DaemonEndToEndTests.until { binding()?.phase == .attached })
            #expect(try await sandbox.macvtaps().count == 1, "exactly one macvtap")
            #expect(try await sandbox.frameReachesHub(from: "enp3s0", nic: "nic0"))
            #expect(await daemon.stop() == 0)
            await udevd.stop()
        }
    }
}
