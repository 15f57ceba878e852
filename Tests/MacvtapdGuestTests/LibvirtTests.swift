import MacvtapdCore
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A real guest defined in a real libvirt (9.0, Debian's) from `macvtapd print libvirt-xml`, with
/// nothing else macvtapd-specific in the domain, managed by `macvtapd run`, on both machine types.
/// Without the print's PCI placement libvirt fails to start such a domain: QEMU puts the NIC on a
/// slot libvirt gave its own root port (q35) or balloon (i440fx).
@Suite(.serialized) struct LibvirtTests {
    static let guestMAC = "52:54:00:7e:00:21"

    static func domain(
        name: String, machine: String, image: (kernel: String, initramfs: String), console: String, fragment: String
    )
        -> String
    {
        var configuration = GuestConfiguration(nics: [])
        configuration.addresses = ["eth0": "10.77.0.2/24"]
        return """
            <domain type='qemu'>
              <name>\(name)</name>
              <memory unit='MiB'>256</memory>
              <vcpu>1</vcpu>
              <os>
                <type arch='x86_64' machine='\(machine)'>hvm</type>
                <kernel>\(image.kernel)</kernel>
                <initrd>\(image.initramfs)</initrd>
                <cmdline>\(configuration.kernelCommandLine)</cmdline>
              </os>
              <on_reboot>destroy</on_reboot>
              <devices>
                <serial type='file'><source path='\(console)'/><target port='0'/></serial>
              </devices>
            \(fragment)
            </domain>
            """
    }

    @Test(arguments: ["q35", "pc"])
    func aDomainFromPrintLibvirtXMLStartsAndItsGuestAnswersThroughMacvtapd(_ machine: String) async throws {
        let image = try await GuestImage.cached()
        try await Sandbox.with(nics: [], lowers: ["up0"]) { sandbox in
            try await PrivateLibvirt.with { libvirt in
                let name = "lv-\(machine)"
                try sandbox.writeConfig(
                    """
                    version: 1
                    defaults:
                      qmp: \(libvirt.home.path)/{vm}.qmp
                    vms:
                      \(name):
                        nics:
                          nic0: {host: up0, mac: "\(Self.guestMAC)"}

                    """)
                let print = try await ChildProcess.run(
                    sandbox.binary, ["print", "libvirt-xml", name, "-c", sandbox.configPath])
                #expect(print.status == 0, "\(print.stderr)")
                var copies: [String] = []
                for file in [image.kernel, image.initramfs] {
                    let copy = libvirt.home.path + "/" + (file.split(separator: "/").last.map(String.init) ?? "")
                    let installed = try await ChildProcess.run(
                        "/usr/bin/install", ["-o", PrivateLibvirt.user, "-m", "0644", file, copy])
                    #expect(installed.status == 0, "\(installed.stderr)")
                    copies.append(copy)
                }
                let console = try libvirt.place("console.log", bytes: [])
                let xml = try libvirt.place(
                    "domain.xml",
                    bytes: Array(
                        Self.domain(
                            name: name, machine: machine, image: (copies[0], copies[1]), console: console,
                            fragment: print.stdout
                        ).utf8))

                // The same domain with the NIC left for QEMU to place does not start under libvirt:
                // what the print's placement is for.
                let unplaced = try libvirt.place(
                    "unplaced.xml",
                    bytes: Array(
                        Self.domain(
                            name: name + "-unplaced", machine: machine, image: (copies[0], copies[1]), console: console,
                            fragment: print.stdout.replacing(",addr=0x1e", with: "")
                        ).utf8))
                #expect(try await libvirt.virsh(["define", unplaced]).status == 0)
                let refused = try await libvirt.virsh(["start", name + "-unplaced"])
                #expect(refused.status != 0)
                #expect(refused.stderr.contains("not available"), "\(refused.stderr)")

                let daemon = try sandbox.startDaemon()
                let defined = try await libvirt.virsh(["define", xml])
                #expect(defined.status == 0, "virsh define: \(defined.stderr)")
                // Booted alone, like every test guest (GuestBootGate): until GUEST READY or 30 s.
                let booted = await GuestBootGate.shared.whileBooting {
                    let started = try? await libvirt.virsh(["start", name])
                    let ready = await eventually(within: .seconds(30)) {
                        let text = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
                        return text.contains("GUEST READY") || started?.status != 0
                    }
                    return (started, ready)
                }
                #expect(booted.0?.status == 0, "virsh start: \(booted.0?.stderr ?? "did not run")")

                let key = BindingKey(vm: name, nic: "nic0")
                #expect(
                    await eventually(within: .seconds(20)) {
                        (try? sandbox.status())??.binding(key)?.phase == .attached
                    },
                    "\(daemon.log())")
                #expect(
                    await eventually(within: .seconds(30)) {
                        let text = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
                        return text.contains("GUEST NIC eth0") && text.contains(Self.guestMAC)
                            && text.contains("GUEST READY")
                    }, "the guest booted with the NIC: \((try? String(contentsOfFile: console, encoding: .utf8)) ?? "")"
                )

                // The guest answers pings from the host interface's far end, through the macvtap.
                try await sandbox.namespace.ip("addr", "add", "10.77.0.1/24", "dev", "up0p")
                let pinger = try ICMPPinger(target: "10.77.0.2", in: sandbox.namespace)
                defer { pinger.close() }
                let answered = await pinger.firstReplyInBackground(interval: .milliseconds(100), timeout: .seconds(15))
                #expect(answered != nil, "the guest answers through macvtapd's backend")

                // virsh destroy ends QEMU: nothing of the VM stays on the host.
                let destroyed = try await libvirt.virsh(["destroy", name])
                #expect(destroyed.status == 0, "\(destroyed.stderr)")
                #expect(
                    try await eventually(within: .seconds(10)) { try await sandbox.macvtaps().isEmpty },
                    "\(daemon.log())")
                #expect(
                    await eventually(within: .seconds(10)) {
                        (try? sandbox.status())??.binding(key)?.phase == .vmNotRunning
                    })
                await daemon.stop()
            }
        }
    }
}
