import MacvtapdCore
import MacvtapdTestSupport
import Testing

@Suite("Guest console lines and kernel command line")
struct GuestEventTests {
    static let mac = MACAddress("52:54:00:9a:00:10")!

    @Test(arguments: [
        ("GUEST READY", GuestEvent.ready),
        ("GUEST NIC eth0 ifindex=2 mac=52:54:00:9a:00:10", .nic(GuestNICIdentity(name: "eth0", ifindex: 2, mac: mac))),
        ("GUEST CARRIER eth1 down", .carrier(interface: "eth1", up: false)),
        ("GUEST CARRIER bond0 up", .carrier(interface: "bond0", up: true)),
        ("GUEST BOND bond0 active=eth1", .bond("bond0", active: "eth1")),
        ("GUEST BOND bond0 active=none", .bond("bond0", active: nil)),
        ("GUEST PING 10.99.0.1 seq=7", .ping(target: "10.99.0.1", sequence: 7)),
        ("GUEST GONE eth1", .gone("eth1")),
        ("GUEST ERROR insmod virtio_net", .error("insmod virtio_net")),
    ])
    func parsesEveryLineTheGuestPrints(line: String, event: GuestEvent) {
        #expect(GuestEvent(line: line) == event)
    }

    @Test(arguments: [
        "[    1.234] virtio_net virtio0 eth0: renamed", "GUEST", "GUEST READY now", "GUEST CARRIER eth0 sideways",
        "GUEST NIC eth0 ifindex=x mac=52:54:00:9a:00:10", "GUEST NIC eth0 ifindex=2 mac=nope", "GUEST N",
        "/init: line 3: GUEST READY",
    ])
    func ignoresAnythingElse(line: String) {
        #expect(GuestEvent(line: line) == nil)
    }

    @Test func kernelCommandLineCarriesWhatInitReads() {
        var configuration = GuestConfiguration(nics: [])
        configuration.addresses = ["eth1": "10.99.1.2/24", "eth0": "10.99.0.2/24"]
        configuration.bonds = [GuestBond(name: "bond0", slaves: ["eth0", "eth1"], miimon: .milliseconds(50))]
        configuration.pingTarget = "10.99.0.1"
        configuration.pingInterval = .milliseconds(200)
        configuration.extraKernelArguments = ["quiet"]
        #expect(
            configuration.kernelCommandLine
                == "console=ttyS0 loglevel=3 panic=-1 no_timer_check macvtapd.ip=eth0=10.99.0.2/24,eth1=10.99.1.2/24"
                + " macvtapd.bond=bond0:eth0,eth1:miimon=50 macvtapd.ping=10.99.0.1 macvtapd.ping_interval=0.200"
                + " macvtapd.poll=0.020 quiet")
    }
}
