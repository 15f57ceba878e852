import MacvtapdCore
import MacvtapdQMP
import Testing

/// `DeviceTree`: every NIC's `-device mac=` from one `info qtree`.
@Suite struct DeviceTreeTests {
    /// Lines of QEMU 7.2's `info qtree` (Debian 1:7.2+dfsg-7+deb12u18, q35), verbatim with their
    /// CRLF line ends, fewer properties: a virtio NIC without an id, an e1000 `nic1`, and a
    /// virtio NIC `nic0` behind a root port with an id of its own (`rp1`).
    static let q35 =
        "    bus: pcie.0\r\n"
        + "      type PCIE\r\n"
        + "      dev: virtio-net-pci, id \"\"\r\n"
        + "        disable-legacy = \"off\"\r\n"
        + "        disable-modern = false\r\n"
        + "        ioeventfd = true\r\n"
        + "        bus: virtio-bus\r\n"
        + "          type virtio-pci-bus\r\n"
        + "          dev: virtio-net-device, id \"\"\r\n"
        + "            csum = true\r\n"
        + "            guest_csum = true\r\n"
        + "            guest_rsc_ext = false\r\n"
        + "            rsc_interval = 300000 (0x493e0)\r\n"
        + "            mac = \"52:54:00:12:34:58\"\r\n"
        + "            netdev = \"anon.port\"\r\n"
        + "      dev: e1000, id \"nic1\"\r\n"
        + "        mac = \"52:54:00:12:34:57\"\r\n"
        + "        netdev = \"nic1.port\"\r\n"
        + "      dev: pcie-root-port, id \"rp1\"\r\n"
        + "        x-migrate-msix = true\r\n"
        + "        bus-reserve = 4294967295 (0xffffffff)\r\n"
        + "        bus: rp1\r\n"
        + "          type PCIE\r\n"
        + "          dev: virtio-net-pci, id \"nic0\"\r\n"
        + "            disable-legacy = \"on\"\r\n"
        + "            disable-modern = false\r\n"
        + "            ioeventfd = true\r\n"
        + "            bus: virtio-bus\r\n"
        + "              type virtio-pci-bus\r\n"
        + "              dev: virtio-net-device, id \"\"\r\n"
        + "                csum = true\r\n"
        + "                guest_rsc_ext = false\r\n"
        + "                rsc_interval = 300000 (0x493e0)\r\n"
        + "                mac = \"52:54:00:12:34:56\"\r\n"
        + "                netdev = \"nic0.port\"\r\n"
        + "      dev: ICH9-SMB, id \"\"\r\n"
        + "        addr = 1f.3\r\n"

    @Test func everyNICWithAnIdHasItsOwnMAC() {
        #expect(
            DeviceTree.deviceMACs(parsing: Self.q35) == [
                "nic0": MACAddress("52:54:00:12:34:56")!, "nic1": MACAddress("52:54:00:12:34:57")!,
            ])
    }

    @Test func somethingElseThanATreeNamesNoNIC() {
        #expect(DeviceTree.deviceMACs(parsing: "") == [:])
        #expect(DeviceTree.deviceMACs(parsing: "unknown command: 'info qtree'\r\n") == [:])
        // A MAC outside any device with an id, or not a MAC, is nobody's.
        #expect(
            DeviceTree.deviceMACs(parsing: "mac = \"52:54:00:12:34:56\"\ndev: e1000, id \"n\"\n  mac = \"x\"\n") == [:])
    }
}
