import Logging
import MacvtapdCore
import MacvtapdDaemon
import MacvtapdReconciler
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon around the controller: real config files, real inotify, in-memory host and VM.
@Suite struct DaemonTests {
    static func config(host: String) -> String {
        """
        version: 1
        vms:
          web1:
            qmp: /run/macvtapd-test/web1.sock
            nics:
              nic0:
                host: \(host)
        """
    }

    @Test func invalidConfigKeepsBackendsAndFixedConfigIsApplied() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("macvtapd.yaml", Self.config(host: "eth0"))
        let host = EmbeddedHost(lowers: ["eth0", "eth1"])
        let web1 = EmbeddedVM(name: "web1", nics: ["nic0": 10])
        let store = StatusStore(path: directory.path + "/status.json")
        let daemon = Daemon(
            settings: .init(configPath: directory.path + "/macvtapd.yaml", store: store, controller: .init()),
            host: host, connector: EmbeddedConnector(vms: ["web1": web1]),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            notifier: SystemdNotifier(environment: [:]))
        let running = Task { await daemon.run() }
        defer { running.cancel() }

        @Sendable func lower() async -> String? { await daemon.controller.currentStatus().first?.lower }
        #expect(await eventually { await lower() == "eth0" && web1.netdevIDs.count == 2 })

        try directory.write("macvtapd.yaml", "version: 1\nvms:\n  web1:\n    qmp: relative.sock\n")
        #expect(await eventually { (try? store.read())?.config?.valid == false })
        let errors = try #require(try store.read()?.config?.errors)
        #expect(errors.contains { $0.contains("macvtapd.yaml:4:10:") && $0.contains("absolute") }, "\(errors)")
        #expect(web1.netdevIDs.count == 2, "an invalid config tears nothing down")
        #expect(host.macvtaps.count == 1)

        try directory.write("macvtapd.yaml", Self.config(host: "eth1"))
        #expect(await eventually { await lower() == "eth1" })
        #expect(await eventually { (try? store.read())?.config?.valid == true })
        #expect(host.macvtaps.map(\.lowerIfindex) == [3])

        await daemon.controller.stop()
        await running.value
        #expect(web1.netdevIDs.count == 2, "stopping leaves the backend in place")
    }

    /// A configuration that becomes writable by others while the daemon runs is rejected at the next
    /// reload like an invalid one: the last good desired state stays, the status names the path.
    @Test func aConfigThatBecameWritableByOthersIsRejectedOnReload() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        chmod(directory.path, 0o755)
        let file = try directory.write("macvtapd.yaml", Self.config(host: "eth0"))
        chmod(file, 0o644)
        let host = EmbeddedHost(lowers: ["eth0", "eth1"])
        let web1 = EmbeddedVM(name: "web1", nics: ["nic0": 10])
        let store = StatusStore(path: directory.path + "/status.json")
        let daemon = Daemon(
            settings: .init(
                configPath: file, store: store, controller: .init(), watchConfig: false, requireSecureConfig: true),
            host: host, connector: EmbeddedConnector(vms: ["web1": web1]),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            notifier: SystemdNotifier(environment: [:]))
        let running = Task { await daemon.run() }
        defer { running.cancel() }
        @Sendable func lower() async -> String? { await daemon.controller.currentStatus().first?.lower }
        #expect(await eventually { await lower() == "eth0" })

        try directory.write("macvtapd.yaml", Self.config(host: "eth1"))
        chmod(file, 0o666)
        await daemon.reload()
        #expect(await eventually { (try? store.read())?.config?.valid == false })
        let errors = try #require(try store.read()?.config?.errors)
        #expect(
            errors.contains { $0.hasPrefix("\(file): error: writable by group and others (mode 0666, owner uid 0)") },
            "\(errors)")
        #expect(await lower() == "eth0", "the last good desired state stays in force")

        chmod(file, 0o644)
        await daemon.reload()
        #expect(await eventually { await lower() == "eth1" })
        await daemon.controller.stop()
        await running.value
    }

    @Test func startsWithoutTouchingAnythingWhenTheConfigIsInvalid() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("macvtapd.yaml", "version: 2\n")
        let host = EmbeddedHost(lowers: ["eth0"])
        let key = BindingKey(vm: "web1", nic: "nic0")
        _ = try await host.createMacvtap(
            MacvtapSpec(
                name: Ownership.macvtapName(for: key), lowerIfindex: 2, lowerName: "eth0", mode: .bridge,
                mac: MACAddress("52:54:00:00:00:01")!, alias: Ownership.alias(for: key)))
        let daemon = Daemon(
            settings: .init(
                configPath: directory.path + "/macvtapd.yaml", store: StatusStore(path: directory.path + "/s.json"),
                controller: .init(resyncInterval: .milliseconds(50))),
            host: host, connector: EmbeddedConnector(vms: [:]),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            notifier: SystemdNotifier(environment: [:]))
        let running = Task { await daemon.run() }
        try await Task.sleep(for: .milliseconds(300))
        #expect(host.macvtaps.count == 1, "no desired state known: the owned macvtap is not an orphan yet")
        await daemon.controller.stop()
        await running.value
    }

    /// Found by the soak: the daemon said READY=1 with STATUS=started after starting the
    /// controller, so on a loaded machine the controller's first status could go out before it,
    /// and systemd then showed "started" for as long as nothing changed. "started" is said before
    /// the controller runs; the last STATUS= systemd hears is the controller's summary.
    @Test func systemdHearsStartedBeforeAnyStatusAndTheSummaryLast() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("macvtapd.yaml", Self.config(host: "eth0"))
        let notify = try NotifySocket(path: directory.path + "/notify.sock")
        defer { notify.close() }
        let web1 = EmbeddedVM(name: "web1", nics: ["nic0": 10])
        let daemon = Daemon(
            settings: .init(
                configPath: directory.path + "/macvtapd.yaml", store: StatusStore(path: directory.path + "/s.json"),
                controller: .init()),
            host: EmbeddedHost(lowers: ["eth0"]), connector: EmbeddedConnector(vms: ["web1": web1]),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            notifier: SystemdNotifier(environment: ["NOTIFY_SOCKET": notify.path]))
        let running = Task { await daemon.run() }
        var heard: [String] = []
        let summary = "STATUS=1 binding(s): 1 Attached"
        let told = await eventually {
            heard += notify.drain()
            return heard.contains { $0.contains("READY=1") }
                && heard.last { $0.contains("STATUS=") }?.contains(summary) == true
        }
        #expect(told, "\(heard)")
        #expect(heard.first == "STATUS=started", "\(heard)")
        await daemon.controller.stop()
        await running.value
    }
}
