import MacvtapdCore
import MacvtapdQMP
import Testing

/// `info network` output captured from QEMU 7.2 (Debian 1:7.2+dfsg-7+deb12u18), verbatim with
/// its CRLF line ends.
enum InfoNetworkFixtures {
    /// One NIC on hub 10, nothing attached.
    static let singleHub =
        "hub 10\r\n \\ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"

    /// Hubs 10, 11, 12; a UDP socket probe on hub 10; a hubport with no peer (hub 12); a NIC with
    /// no peer; a socket netdev with no peer.
    static let severalHubs =
        "hub 12\r\n \\ orphan\r\nhub 11\r\n"
        + " \\ nic1.port: nic1: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:01\r\nhub 10\r\n"
        + " \\ probe.port: probe: index=0,type=socket,socket: udp=127.0.0.1:40001\r\n"
        + " \\ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
        + "lone: index=0,type=socket,socket: udp=127.0.0.1:40003\r\n"
        + "nic2: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:00:00:02\r\n"

    /// A tap added with `netdev_add type=tap fd=F` but not yet on a hub, and a NIC peered
    /// directly with a tap QEMU opened itself.
    static let standaloneTap =
        "hub 10\r\n \\ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
        + "nic3: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:03\r\n"
        + " \\ direct: index=0,type=tap,ifname=qcaptap1,script=no,downscript=no\r\n"
        + "T1: index=0,type=tap,fd=12\r\n"

    /// The tap behind hubport P1 on hub 10: the attached state macvtapd produces.
    static let tapOnHub =
        "hub 10\r\n \\ P1: T1: index=0,type=tap,fd=12\r\n"
        + " \\ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
        + "nic3: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:03\r\n"
        + " \\ direct: index=0,type=tap,ifname=qcaptap1,script=no,downscript=no\r\n"

    /// After `netdev_del` of hub 20's only port: QEMU keeps the empty hub.
    static let emptiedHub =
        "hub 20\r\nhub 10\r\n"
        + " \\ nic0.port: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"

    /// `-nodefaults` and no network options at all.
    static let empty = ""
}

@Suite struct NetworkInfoParserTests {
    let mac0 = MACAddress("52:54:00:12:34:56")!

    @Test func singleHub() throws {
        let info = try NetworkInfo(parsing: InfoNetworkFixtures.singleHub)
        let nic0 = NetworkInfo.NIC(
            id: "nic0", model: "virtio-net-pci", mac: mac0, peer: .hubPort(hubID: 10, portID: "nic0.port"))
        #expect(info.nics == [nic0])
        #expect(info.hubs.count == 1)
        #expect(info.hub(10)?.ports.map(\.id) == ["nic0.port"])
        #expect(info.hub(10)?.backendPorts == [])
        #expect(info.standaloneNetdevs == [])
        #expect(info.hubID(ofNIC: "nic0") == 10)
    }

    @Test func severalHubsOrphanPortPeerlessNICAndSocket() throws {
        let info = try NetworkInfo(parsing: InfoNetworkFixtures.severalHubs)
        #expect(info.hubs.map(\.id) == [12, 11, 10])
        #expect(info.hub(12)?.ports == [.init(id: "orphan", peer: nil)])
        #expect(info.hub(11)?.ports.first?.peer?.type == "nic")
        let probe = try #require(info.hub(10)?.port("probe.port")?.peer)
        #expect(probe == .init(id: "probe", type: "socket", queueIndex: 0, info: "socket: udp=127.0.0.1:40001"))
        #expect(info.hub(10)?.backendPorts.map(\.id) == ["probe.port"])
        #expect(info.nics.map(\.id) == ["nic1", "nic0", "nic2"])
        #expect(info.nic("nic1")?.model == "e1000")
        #expect(info.nic("nic1")?.peer == .hubPort(hubID: 11, portID: "nic1.port"))
        #expect(info.nic("nic2")?.peer == nil)
        #expect(info.nic("nic2")?.mac == MACAddress("52:54:00:00:00:02"))
        #expect(info.standaloneNetdevs.map(\.id) == ["lone"])
        #expect(info.standaloneNetdevs.first?.type == "socket")
    }

    @Test func standaloneTapAndDirectlyPeeredNIC() throws {
        let info = try NetworkInfo(parsing: InfoNetworkFixtures.standaloneTap)
        let tap = NetworkInfo.NetClient(id: "T1", type: "tap", queueIndex: 0, info: "fd=12")
        #expect(info.standaloneNetdevs == [tap])
        #expect(tap.parameters == ["fd": "12"])
        guard case .netdev(let direct) = info.nic("nic3")?.peer else {
            Issue.record("nic3 should be peered with the tap 'direct'")
            return
        }
        #expect(direct.id == "direct")
        #expect(direct.type == "tap")
        #expect(direct.parameters["ifname"] == "qcaptap1")
    }

    @Test func tapBehindHubPort() throws {
        let info = try NetworkInfo(parsing: InfoNetworkFixtures.tapOnHub)
        let hub = try #require(info.hub(10))
        #expect(hub.ports.map(\.id) == ["P1", "nic0.port"])
        #expect(hub.backendPorts.map(\.id) == ["P1"])
        #expect(hub.port("P1")?.peer == .init(id: "T1", type: "tap", queueIndex: 0, info: "fd=12"))
        #expect(info.standaloneNetdevs == [])
        #expect(info.nics.map(\.id) == ["nic0", "nic3"])
    }

    @Test func emptiedHubHasNoPorts() throws {
        let info = try NetworkInfo(parsing: InfoNetworkFixtures.emptiedHub)
        #expect(info.hubs.map(\.id) == [20, 10])
        #expect(info.hub(20)?.ports == [])
        #expect(info.nic("nic0")?.peer == .hubPort(hubID: 10, portID: "nic0.port"))
    }

    @Test func emptyOutputIsAnEmptyTopology() throws {
        #expect(try NetworkInfo(parsing: InfoNetworkFixtures.empty) == NetworkInfo())
    }

    @Test(arguments: [
        ("hub 10\r\nsomething odd\r\n", 2),
        (" \\ P1: T1: index=0,type=tap,fd=12\r\n", 1),
        ("hub 10\r\n \\ P1: T1: type=tap\r\n", 2),
    ])
    func malformedLinesNameTheLine(text: String, line: Int) {
        #expect(throws: NetworkInfoParseError.self) { try NetworkInfo(parsing: text) }
        do {
            _ = try NetworkInfo(parsing: text)
        } catch {
            #expect(error.line == line)
        }
    }
}
