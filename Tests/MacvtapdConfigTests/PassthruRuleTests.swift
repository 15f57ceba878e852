import MacvtapdConfig
import MacvtapdCore
import Testing

/// Passthru owns its host interface: validate refuses what the kernel would, naming both NICs.
@Suite("passthru owns its host interface")
struct PassthruRuleTests {
    private func load(_ files: [(String, String)]) -> [String] {
        ConfigLoader.load(files.map { ConfigSource(path: $0.0, text: $0.1) }).diagnostics.map(\.description)
    }

    @Test func twoPassthruNICsOnOneInterfaceAreRefused() {
        let errors = load([
            (
                "a.yaml",
                """
                version: 1
                vms:
                  web1:
                    qmp: /run/q/web1.sock
                    nics:
                      nic0: {host: eth0, mode: passthru}
                      nic1: {host: eth0, mode: passthru}

                """
            )
        ])
        #expect(
            errors == [
                "a.yaml:7:7: error: NIC web1/nic1 (mode passthru) and NIC web1/nic0 at a.yaml:6:7 (mode passthru) "
                    + "both use host interface 'eth0'; a passthru macvtap owns its host interface, so only one NIC "
                    + "can use it in passthru mode"
            ])
    }

    @Test func passthruSharingWithBridgeAcrossFilesNamesBothFiles() {
        let errors = load([
            (
                "10-web.yaml",
                "version: 1\nvms:\n  web1:\n    qmp: /run/q/web1.sock\n    nics:\n      nic0: {host: eth0}\n"
            ),
            (
                "20-db.yaml",
                "version: 1\ndefaults: {mode: passthru}\nvms:\n  db1:\n    qmp: /run/q/db1.sock\n"
                    + "    nics:\n      nic0: {host: eth0}\n"
            ),
        ])
        #expect(
            errors == [
                "20-db.yaml:7:7: error: NIC db1/nic0 (mode passthru) and NIC web1/nic0 at 10-web.yaml:6:7 "
                    + "(mode bridge) both use host interface 'eth0'; a passthru macvtap owns its host interface, "
                    + "so it cannot share it with another NIC"
            ])
    }

    @Test func aBridgeNICAfterAPassthruOneIsRefusedToo() {
        let errors = load([
            (
                "a.yaml",
                "version: 1\nvms:\n  web1:\n    qmp: /run/q/web1.sock\n    nics:\n"
                    + "      nic0: {host: eth0, mode: passthru}\n      nic1: {host: eth0, mode: vepa}\n"
            )
        ])
        #expect(errors.count == 1)
        #expect(
            errors.first?.hasPrefix("a.yaml:7:7: error: NIC web1/nic1 (mode vepa) and NIC web1/nic0 at a.yaml:6:7")
                == true)
    }

    @Test func passthruOnItsOwnInterfaceAndSharedBridgeAreFine() {
        let errors = load([
            (
                "a.yaml",
                "version: 1\nvms:\n  web1:\n    qmp: /run/q/web1.sock\n    nics:\n"
                    + "      nic0: {host: eth0, mode: passthru}\n      nic1: {host: eth1}\n      nic2: {host: eth1}\n"
            )
        ])
        #expect(errors.isEmpty)
    }
}
