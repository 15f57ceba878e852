import MacvtapdCore
import Testing

@Suite struct LaunchArgumentsTests {
    static func nic(_ id: String, hub: Int? = nil, mac: String? = nil, device: NICDevice = NICDevice()) -> NICBinding {
        NICBinding(
            key: BindingKey(vm: "web1", nic: id), host: .name("eth0"), mac: mac.flatMap(MACAddress.init), hub: hub,
            device: device)
    }

    static func vm(_ nics: [NICBinding], qmp: String = "/run/macvtapd/qmp/web1.sock") -> VMSpec {
        VMSpec(name: "web1", qmp: qmp, nics: Dictionary(uniqueKeysWithValues: nics.map { ($0.key.nic, $0) }))
    }

    @Test func monitorThenEachNICsHubportAndDeviceInIDOrder() {
        let launch = LaunchArguments(
            Self.vm([
                Self.nic("nic1", hub: 11, device: NICDevice(model: "e1000e", bus: "pcie.0", address: "0x1d.0")),
                Self.nic("nic0", hub: 10, mac: "52:54:00:12:34:56"),
            ]))
        #expect(
            launch.arguments == [
                "-qmp", "unix:/run/macvtapd/qmp/web1.sock,server=on,wait=off",
                "-netdev", "hubport,id=nic0.port,hubid=10",
                "-device", "virtio-net-pci,id=nic0,netdev=nic0.port,mac=52:54:00:12:34:56",
                "-netdev", "hubport,id=nic1.port,hubid=11",
                "-device", "e1000e,id=nic1,netdev=nic1.port,bus=pcie.0,addr=0x1d.0",
            ])
    }

    @Test func derivedHubsAreStableDistinctAndLeaveGivenOnesAlone() {
        let ids = (0..<200).map { "nic\($0)" }
        let hubs = LaunchArguments.hubs(of: Self.vm(ids.map { Self.nic($0) } + [Self.nic("fixed", hub: 1234)]))
        #expect(Set(hubs.values).count == 201, "every NIC its own hub")
        #expect(hubs["fixed"] == 1234)
        #expect(hubs.values.allSatisfy { $0 == 1234 || (1000...9999).contains($0) })
        // The same on every host and run, and the others' unchanged when a NIC is added.
        #expect(LaunchArguments.hubs(of: Self.vm(ids.map { Self.nic($0) } + [Self.nic("fixed", hub: 1234)])) == hubs)
        let fewer = LaunchArguments.hubs(of: Self.vm([Self.nic("nic0"), Self.nic("nic1")]))
        #expect(fewer["nic0"] == LaunchArguments.derivedHub("nic0"))
        #expect(fewer["nic1"] == LaunchArguments.derivedHub("nic1"))
    }

    @Test func aClashMovesUpToTheNextFreeHub() {
        let clash = LaunchArguments.derivedHub("nic0")
        let hubs = LaunchArguments.hubs(of: Self.vm([Self.nic("nic0"), Self.nic("pinned", hub: clash)]))
        #expect(hubs["pinned"] == clash)
        #expect(hubs["nic0"] == (clash == 9999 ? 1000 : clash + 1))
    }

    @Test func shellLineAndXMLQuoteWhatTheyMust() {
        let launch = LaunchArguments(Self.vm([Self.nic("nic0", hub: 10)], qmp: "/run/vm's dir,x/q.sock"))
        #expect(
            launch.shellLine
                == "-qmp 'unix:/run/vm'\\''s dir,,x/q.sock,server=on,wait=off' -netdev hubport,id=nic0.port,hubid=10 "
                + "-device virtio-net-pci,id=nic0,netdev=nic0.port")
        #expect(
            launch.libvirtXML.hasPrefix(
                "<qemu:commandline xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\">\n"))
        #expect(
            launch.libvirtXML.contains("<qemu:arg value=\"unix:/run/vm&apos;s dir,,x/q.sock,server=on,wait=off\"/>"))
        #expect(launch.libvirtXML.hasSuffix("\n</qemu:commandline>"))
    }
}
