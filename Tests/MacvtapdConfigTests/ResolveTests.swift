import MacvtapdConfig
import MacvtapdCore
import MacvtapdTestSupport
import Testing

@Suite("Valid configurations resolve to the desired state")
struct ResolveTests {
    private func load(_ text: String, path: String = "t.yaml") -> DesiredState? {
        let result = ConfigLoader.load([ConfigSource(path: path, text: text)])
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        return result.desired
    }

    @Test func everyFieldAndTheDefaultsOfTheFile() throws {
        let desired = try #require(
            load(
                """
                version: 1
                defaults:
                  mode: vepa
                  link: up
                  announce: false
                vms:
                  web1:
                    qmp: /run/macvtapd/qmp/web1.sock
                    nics:
                      nic0:
                        host: eth0
                      nic1:
                        host: {mac: "3C:FD:FE:AA:BB:CC"}
                        mode: private
                        mac: "52:54:00:12:34:56"
                        hub: 10
                        link: follow
                        announce: True
                      nic2:
                        host: {name: enp3s0f1}
                """))
        let vm = try #require(desired.vms["web1"])
        #expect(vm.qmp == "/run/macvtapd/qmp/web1.sock")
        #expect(vm.source == SourceLocation(file: "t.yaml", line: 7, column: 3))
        #expect(
            desired.binding(BindingKey(vm: "web1", nic: "nic0"))
                == NICBinding(
                    key: BindingKey(vm: "web1", nic: "nic0"), host: .name("eth0"), mode: .vepa, link: .up,
                    announce: false, source: SourceLocation(file: "t.yaml", line: 10, column: 7)))
        #expect(
            desired.binding(BindingKey(vm: "web1", nic: "nic1"))
                == NICBinding(
                    key: BindingKey(vm: "web1", nic: "nic1"), host: .mac(MACAddress("3c:fd:fe:aa:bb:cc")!),
                    mode: .private, mac: MACAddress("52:54:00:12:34:56"), hub: 10, link: .follow,
                    announce: true, source: SourceLocation(file: "t.yaml", line: 12, column: 7)))
        #expect(desired.binding(BindingKey(vm: "web1", nic: "nic2"))?.host == .name("enp3s0f1"))
        #expect(desired.bindings.map(\.key.nic) == ["nic0", "nic1", "nic2"])
    }

    @Test(arguments: [
        ("{path: pci-0000:03:00.0}", HostMatcher.path("pci-0000:03:00.0")),
        ("{path: \"platform-fe300000.ethernet\"}", .path("platform-fe300000.ethernet")),
        ("{property: {ID_NET_NAME_PATH: enp3s0}}", .property(["ID_NET_NAME_PATH": "enp3s0"])),
        (
            "{property: {ID_VENDOR_ID: \"0x8086\", ID_NET_NAME_MAC: enx3cfdfeaabbcc}}",
            .property(["ID_VENDOR_ID": "0x8086", "ID_NET_NAME_MAC": "enx3cfdfeaabbcc"])
        ),
        ("{property: {ID_MODEL_ID: \"1234\"}}", .property(["ID_MODEL_ID": "1234"])),
    ])
    func udevHostMatchers(_ host: String, _ expected: HostMatcher) throws {
        let desired = try #require(
            load("version: 1\nvms:\n  a:\n    qmp: /q\n    nics:\n      n:\n        host: \(host)\n"))
        #expect(desired.binding(BindingKey(vm: "a", nic: "n"))?.host == expected)
    }

    @Test func builtInDefaultsAreBridgeAndFollow() throws {
        let desired = try #require(
            load("version: 1\nvms:\n  a:\n    qmp: /q\n    nics:\n      n:\n        host: eth0\n"))
        let binding = try #require(desired.binding(BindingKey(vm: "a", nic: "n")))
        #expect(binding.mode == .bridge)
        #expect(binding.link == .follow)
        #expect(binding.announce)
        #expect(!binding.followsGuestMAC)
        #expect(binding.mac == nil)
        #expect(binding.hub == nil)
    }

    @Test(arguments: ["guest", "\"guest\""])
    func macGuestFollowsTheGuestProgrammedMAC(_ value: String) throws {
        let desired = try #require(
            load(
                "version: 1\nvms:\n  a:\n    qmp: /q\n    nics:\n      n:\n        host: eth0\n        mac: \(value)\n")
        )
        let binding = try #require(desired.binding(BindingKey(vm: "a", nic: "n")))
        #expect(binding.followsGuestMAC)
        #expect(binding.mac == nil)
        #expect(desired.vms["a"]?.guestMACNICs == ["n"])
    }

    @Test func emptyVMsAndEmptyNICsAreValid() throws {
        #expect(try #require(load("version: 1\nvms: {}\n")).vms.isEmpty)
        #expect(try #require(load("version: 1\nvms:\n  a: {qmp: /q, nics: {}}\n")).vms["a"]?.nics.isEmpty == true)
    }

    @Test func yamlSpellingsTheCoreSchemaAllows() throws {
        // Unquoted MAC (a string in YAML 1.2), hexadecimal hub, flow style, a reused anchor, an explicit !!str tag.
        let desired = try #require(
            load(
                """
                version: 1
                vms:
                  a: {qmp: &sock /run/a.sock, nics: {n: {host: !!str 1234, mac: 52:54:00:00:00:0a, hub: 0x10}}}
                """))
        let binding = try #require(desired.binding(BindingKey(vm: "a", nic: "n")))
        #expect(binding.host == .name("1234"))
        #expect(binding.mac == MACAddress("52:54:00:00:00:0a"))
        #expect(binding.hub == 16)
    }

    @Test func directoryMergesFilesInNameOrderWithPerFileDefaults() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write(
            "20-db.yml",
            "version: 1\nvms:\n  db1:\n    qmp: /run/db1.sock\n    nics:\n      nic0:\n        host: eth1\n")
        try directory.write(
            "10-web.yaml",
            "version: 1\ndefaults: {mode: vepa}\nvms:\n  web1:\n    qmp: /run/web1.sock\n    nics:\n      nic0:\n        host: eth0\n"
        )
        try directory.write("README.md", "not configuration")
        try directory.write(".hidden.yaml", "not: valid")
        try directory.write("30-old.yaml.bak", "not: valid")

        let result = ConfigLoader.load(path: directory.path)
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.files == [directory.path + "/10-web.yaml", directory.path + "/20-db.yml"])
        let desired = try #require(result.desired)
        #expect(desired.binding(BindingKey(vm: "web1", nic: "nic0"))?.mode == .vepa)
        // 10-web.yaml's defaults do not leak into 20-db.yml.
        #expect(desired.binding(BindingKey(vm: "db1", nic: "nic0"))?.mode == .bridge)
        #expect(desired.vms["db1"]?.source?.file == directory.path + "/20-db.yml")
    }

    @Test func duplicateVMAcrossFilesNamesBothFiles() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let vm = "version: 1\nvms:\n  web1:\n    qmp: /run/web1-%@.sock\n    nics: {}\n"
        let first = try directory.write("10-a.yaml", vm.replacingOccurrences(of: "%@", with: "a"))
        let second = try directory.write("20-b.yaml", vm.replacingOccurrences(of: "%@", with: "b"))
        let result = ConfigLoader.load(path: directory.path)
        #expect(result.desired == nil)
        #expect(
            result.diagnostics.map(\.description) == [
                "\(second):3:3: error: VM 'web1' is declared twice; it is first declared at \(first):3:3"
            ])
    }

    @Test func sameMACInTwoFilesNamesBothFiles() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let vm =
            "version: 1\nvms:\n  %@:\n    qmp: /run/%@.sock\n    nics:\n      nic0: {host: eth0, mac: \"52:54:00:00:00:01\"}\n"
        let first = try directory.write("a.yaml", vm.replacingOccurrences(of: "%@", with: "vm1"))
        let second = try directory.write("b.yaml", vm.replacingOccurrences(of: "%@", with: "vm2"))
        let result = ConfigLoader.load(path: directory.path)
        #expect(
            result.diagnostics.map(\.description) == [
                "\(second):6:31: error: MAC 52:54:00:00:00:01 of NIC vm2/nic0 is also the MAC of NIC vm1/nic0 at "
                    + "\(first):6:31; each NIC needs its own MAC"
            ])
    }

    @Test func errorsInSeveralFilesAreAllReported() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let first = try directory.write("a.yaml", "version: 1\nvms: [\n")
        let second = try directory.write("b.yaml", "version: 3\nvms: {}\n")
        let result = ConfigLoader.load(path: directory.path)
        #expect(result.diagnostics.map { $0.location?.file } == [first, second])
    }
}
