import Foundation
import MacvtapdTestSupport
import Testing

/// `macvtapd print`: what a launcher pastes, from the desired state, with the monitor's default.
@Suite("print command")
struct PrintCommandTests {
    static let config = """
        version: 1
        vms:
          web1:
            nics:
              nic0: {host: eth0, mac: "52:54:00:12:34:56", hub: 10, addr: "0x1e"}

        """

    @Test func qemuArgsOnePerLineWithTheDefaultMonitor() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("m.yaml", Self.config)
        let run = try await macvtapd(["print", "qemu-args", "web1", "-c", path])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(
            run.stdout == """
                -qmp
                unix:/run/macvtapd/qmp/web1.sock,server=on,wait=off
                -netdev
                hubport,id=nic0.port,hubid=10
                -device
                virtio-net-pci,id=nic0,netdev=nic0.port,mac=52:54:00:12:34:56,addr=0x1e

                """)
        #expect(run.stderr.isEmpty)
        let shell = try await macvtapd(["print", "qemu-args", "web1", "--shell", "-c", path])
        #expect(shell.stdout.split(separator: "\n").count == 1)

        // The libvirt element parses as XML and carries the same arguments, in order.
        let xml = try await macvtapd(["print", "libvirt-xml", "web1", "-c", path])
        #expect(xml.status == 0)
        // Parsed by a namespace-aware XML parser (Python's ElementTree): the prefix resolves to
        // libvirt's QEMU namespace by its own declaration, as in libvirt's parser.
        let file = try directory.write("fragment.xml", xml.stdout)
        let parse = try await ChildProcess.run(
            "/usr/bin/env",
            [
                "python3", "-c",
                "import sys, xml.etree.ElementTree as E\nroot = E.parse(sys.argv[1]).getroot()\nprint(root.tag)\n"
                    + "for arg in root: print(arg.tag, arg.get('value'), sep='\\t')",
                file,
            ])
        #expect(parse.status == 0, "\(parse.stderr)")
        let lines = parse.stdout.split(separator: "\n").map(String.init)
        let qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
        #expect(lines.first == qemu + "commandline")
        #expect(lines.dropFirst().allSatisfy { $0.hasPrefix(qemu + "arg\t") })
        let values = lines.dropFirst().map { String($0.dropFirst(qemu.count + 4)) }
        #expect(values == run.stdout.split(separator: "\n").map(String.init))
    }

    @Test func anUnknownVMOrInvalidConfigIsExit1WithTheReason() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("m.yaml", Self.config)
        let unknown = try await macvtapd(["print", "qemu-args", "db1", "-c", path])
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no VM 'db1' (declared: web1)"))
        #expect(unknown.stdout.isEmpty)
        let bad = try directory.write(
            "bad.yaml", "version: 1\nvms:\n  web1:\n    nics:\n      nic0: {host: eth0, addr: \"0x40\"}\n")
        let invalid = try await macvtapd(["print", "libvirt-xml", "web1", "-c", bad])
        #expect(invalid.status == 1)
        #expect(invalid.stderr.contains("bad.yaml:5:32: error: invalid 'addr' '0x40'"), "\(invalid.stderr)")
        #expect(invalid.stderr.contains("invalid configuration; nothing was printed"))
    }

    @Test func aNICWithoutAMACIsPrintedWithAWarning() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("m.yaml", "version: 1\nvms:\n  web1:\n    nics:\n      nic0: {host: eth0}\n")
        let run = try await macvtapd(["print", "qemu-args", "web1", "-c", path])
        #expect(run.status == 0)
        #expect(run.stdout.contains("virtio-net-pci,id=nic0,netdev=nic0.port\n"))
        #expect(run.stderr.contains("NIC 'nic0' of VM 'web1' has no 'mac'"))
    }
}
