import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A VM launched with nothing but what `macvtapd print qemu-args` prints is one macvtapd manages:
/// its monitor where the config says, its NIC on the printed hub and PCI slot, frames through.
@Suite struct PrintedLaunchTests {
    @Test func printedArgumentsStartAQEMUThatMacvtapdThenManages() async throws {
        // The sandbox's own VM has no NICs and stays out of the config; the VM under test is the
        // one started below from the printed arguments.
        try await Sandbox.with(nics: [], lowers: ["up0"]) { sandbox in
            let monitor = sandbox.directory.path + "/printed.qmp"
            try sandbox.writeConfig(
                """
                version: 1
                defaults:
                  qmp: \(sandbox.directory.path)/{vm}.qmp
                vms:
                  printed:
                    nics:
                      nic0: {host: up0, mac: "52:54:00:7e:00:01", bus: pcie.0, addr: "0x1e"}

                """)
            let printed = try await ChildProcess.run(
                sandbox.binary, ["print", "qemu-args", "printed", "-c", sandbox.configPath])
            #expect(printed.status == 0, "\(printed.stderr)")
            let arguments = printed.stdout.split(separator: "\n").map(String.init)
            #expect(arguments.contains("unix:\(monitor),server=on,wait=off"), "the default monitor path: \(arguments)")
            let hub = LaunchArguments.derivedHub("nic0")
            #expect(arguments.contains("hubport,id=nic0.port,hubid=\(hub)"))

            let probe = try Probe()
            defer { probe.close() }
            let qemu = try await QEMUProcess.launch(
                QEMUOptions(
                    nics: [], probes: [(probe, hub)], additionalMonitors: ["test.qmp"], extraArguments: arguments))
            defer { Task { await qemu.terminate() } }

            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
            #expect(apply.stdout.contains("printed/nic0: Attached"), "\(apply.stdout)")

            // The guest device is where the config put it, on the printed hub with macvtapd's backend.
            let client = try await QMPClient.connect(to: qemu.additionalMonitorPaths[0])
            let network = try await client.networkInfo()
            let tree = try await client.execute("human-monitor-command", arguments: ["command-line": "info pci"])
            await client.close()
            #expect(network.netdevIDs.filter { $0.hasPrefix("mvtd.") }.count == 2, "\(network.netdevIDs)")
            let pci = tree.stringValue ?? ""
            #expect(pci.contains("Bus  0, device  30, function 0"), "slot 0x1e on pcie.0: \(pci)")

            // Frames from the host interface reach the NIC's hub.
            let socket = try await PacketSocket.open(interface: "up0p", in: sandbox.namespace)
            defer { socket.close() }
            let reached = try await probe.receivesFrame(to: MACAddress("52:54:00:7e:00:01")!, sentThrough: socket)
            #expect(reached, "a frame from up0 reaches the printed hub")
            await qemu.terminate()
        }
    }
}
